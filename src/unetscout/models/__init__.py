"""models stage of unetscout."""
