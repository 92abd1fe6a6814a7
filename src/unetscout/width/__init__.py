"""width stage of unetscout."""
