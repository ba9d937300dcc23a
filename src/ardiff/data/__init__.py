"""Datasets. :func:`build_dataset` maps a run's ``data`` section to a dataset."""

from ardiff.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, load_fashion_mnist

DATASETS = ("fashion_mnist",)


def build_dataset(data_config, model_config=None):
    name = data_config.name
    if name == "fashion_mnist":
        return FashionMNIST(data_config.root, data_config.split)
    raise ValueError(f"data.name={name!r} is not a known dataset; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "FashionMNIST", "build_dataset", "load_fashion_mnist"]
