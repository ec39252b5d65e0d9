"""Training core: `train_one` (one model, one device, no Ray), `train_stacked` (K members of one spec as one
vmapped module), CPU quota + sampler, checkpoint files."""

from crnn_ray.train.checkpoint import load_checkpoint
from crnn_ray.train.config import TrainConfig
from crnn_ray.train.loop import TrainResult, train_one
from crnn_ray.train.quota import CpuSampler, apply_cpu_quota
from crnn_ray.train.stacked import StackMember, train_stacked

__all__ = ["TrainConfig", "TrainResult", "train_one", "train_stacked", "StackMember", "apply_cpu_quota", "CpuSampler",
           "load_checkpoint"]
