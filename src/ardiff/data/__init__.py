"""Generic datasets: Fashion-MNIST, Moving Fashion-MNIST, image and video folders, latent caches.

Datasets are built from a run's ``data`` section by :func:`ardiff.train.datasets.build_dataset`,
which also knows the story world's datasets (:mod:`ardiff.worlds.datasets`).
"""

from ardiff.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, load_fashion_mnist
from ardiff.data.image_folder import ImageFolder
from ardiff.data.latents import LatentDataset, VAERecord, decode_latents, encode_latent_cache, load_vae
from ardiff.data.moving_fmnist import MovingFashionMNIST
from ardiff.data.video_folder import VideoFolder

__all__ = [
    "FASHION_MNIST_CLASSES", "FashionMNIST", "ImageFolder", "LatentDataset", "MovingFashionMNIST", "VAERecord",
    "VideoFolder", "decode_latents", "encode_latent_cache", "load_fashion_mnist", "load_vae",
]
