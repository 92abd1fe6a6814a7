"""search stage of unetscout."""
