from .superbert import SuperBert, SuperBertConfig, SuperBertOutput, depth_map
from .checkpoint import load_supernet, save_supernet

__all__ = ["SuperBert", "SuperBertConfig", "SuperBertOutput", "depth_map", "load_supernet", "save_supernet"]
