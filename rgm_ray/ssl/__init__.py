"""Semi-supervised classification with the semantic loss on generated images (stage ssl)."""

from rgm_ray.ssl.labels import balanced_label_subset, split_train_val
from rgm_ray.ssl.objective import ssl_loss
from rgm_ray.ssl.resnet import ResNet, ResNetConfig, preprocess
from rgm_ray.ssl.semantic_loss import semantic_loss

__all__ = ["ResNet", "ResNetConfig", "balanced_label_subset", "preprocess", "semantic_loss",
           "split_train_val", "ssl_loss"]
