"""stats stage of unetscout."""
