"""mtl: fused LiDAR + camera multi-task perception, from training to a torch-free runtime.

``import mtl`` stays light (numpy only); torch is imported by the training/export modules that need it.
"""
__version__ = "0.1.0"
