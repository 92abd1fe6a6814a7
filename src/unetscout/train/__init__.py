"""train stage of unetscout."""
