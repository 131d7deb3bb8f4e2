"""Generators (PixelCNN++, VAE, GAN) and their registry, the domain ResNet, training and checkpoints (stage models)."""

from rgm_ray.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rgm_ray.models.gan import GAN, GANConfig, sample_gan
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from rgm_ray.models.pixelcnnpp_sampling import sample_pixelcnnpp
from rgm_ray.models.registry import GENERATOR_NAMES, GeneratorFamily, family_for_kind, get_family
from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.models.vae import VAE, VAEConfig

__all__ = ["CheckpointError", "GAN", "GANConfig", "GENERATOR_NAMES", "GeneratorFamily", "PixelCNNpp",
           "PixelCNNppConfig", "ResNet", "ResNetConfig", "VAE", "VAEConfig", "family_for_kind", "get_family",
           "load_checkpoint", "sample_gan", "sample_pixelcnnpp", "save_checkpoint"]
