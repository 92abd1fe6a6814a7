"""data stage of unetscout."""
