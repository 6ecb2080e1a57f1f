from .superbert import SuperBert, SuperBertConfig, SuperBertOutput, depth_map
from .checkpoint import load_supernet, save_supernet
from .teacher_net import TeacherNet

__all__ = [
    "SuperBert",
    "SuperBertConfig",
    "SuperBertOutput",
    "depth_map",
    "load_supernet",
    "save_supernet",
    "TeacherNet",
]
