"""A run's ``data`` section -> a dataset: the generic ones (:mod:`ardiff.data`) and the story
world's (:mod:`ardiff.worlds.datasets`)."""

from __future__ import annotations

from ardiff.data import FashionMNIST, ImageFolder, LatentDataset, MovingFashionMNIST, VideoFolder
from ardiff.worlds.datasets import StoryDataset, StoryFrameDataset

DATASETS = ("fashion_mnist", "moving_fashion_mnist", "stories", "story_frames", "image_folder", "video_folder",
            "latents")


def _image_size(data_config, model_config) -> int:
    """``data.image_size``, else the model's spatial size (input_size is (H, W) or (F, H, W))."""
    if data_config.image_size is not None:
        return data_config.image_size
    if model_config is None:
        raise ValueError(f"data.image_size is required for data.name={data_config.name!r} "
                         f"when no model config gives the input size")
    return model_config.input_size[-1]


def build_dataset(data_config, model_config=None):
    """The dataset a run's ``data`` section names; ``model_config`` gives the image size when
    ``data.image_size`` does not."""
    name = data_config.name
    if name == "fashion_mnist":
        # image_size pads the 28x28 items onto a larger canvas (e.g. 32 for 4x4 patches)
        return FashionMNIST(data_config.root, data_config.split, pad_to=data_config.image_size)
    c = data_config
    if name == "moving_fashion_mnist":
        return MovingFashionMNIST(c.split, c.root, c.num_frames, c.canvas_size, c.num_items, c.speed,
                                  c.num_videos, c.seed)
    if name == "stories":
        return StoryDataset(c.split, c.root, c.num_frames, c.num_videos, c.text_encoder, c.seed)
    if name == "story_frames":
        return StoryFrameDataset(c.split, c.root, c.num_videos, c.text_encoder, c.seed)
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not a known dataset; choose one of {', '.join(DATASETS)}")
    if c.root is None:
        raise ValueError(f"data.root is required for data.name={name}")
    if name == "image_folder":
        return ImageFolder(c.root, _image_size(c, model_config), c.hflip, c.skip_corrupt, c.seed)
    if name == "video_folder":
        return VideoFolder(c.root, _image_size(c, model_config), c.num_frames, c.frame_stride, c.hflip,
                           c.skip_corrupt, c.seed)
    return LatentDataset(c.root)


