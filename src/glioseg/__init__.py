"""glioseg: 3D brain-tumour segmentation from multi-modal MRI."""
__version__ = "0.1.0"
