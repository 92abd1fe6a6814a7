"""unetscout: compact 2-D U-Nets for medical image segmentation, chosen and tested honestly."""

__version__ = "0.1.0"
