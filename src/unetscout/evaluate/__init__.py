"""evaluate stage of unetscout."""
