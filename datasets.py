"""SRDataset: (LR, HR) pairs from the JSON image lists written by create_data_lists.py."""

import json
import os

from torch.utils.data import Dataset

from utils import ImageTransforms, load_image


class SRDataset(Dataset):
    """Reads `train_images.json` (split 'train') or `<test_data_name>_test_images.json` (split 'test') from
    `data_folder` and yields (lr_img, hr_img) tensors:
        train: lr (3, crop_size / s, crop_size / s), hr (3, crop_size, crop_size) - a random crop of each image
        test:  lr (3, H / s, W / s), hr (3, H, W) - the whole image, trimmed to a multiple of the scale
    in the ranges lr_img_type / hr_img_type (see utils.convert_image). The tutorial trains with
    lr_img_type='imagenet-norm' and hr_img_type='[-1, 1]'."""

    def __init__(self, data_folder, split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                 test_data_name=None, blur_sigma=0.0):
        self.split = split.lower()
        if self.split not in {'train', 'test'}:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        if self.split == 'test' and test_data_name is None:
            raise ValueError("split 'test' needs test_data_name (e.g. 'Set5')")

        list_name = 'train_images.json' if self.split == 'train' else f'{test_data_name}_test_images.json'
        list_path = os.path.join(data_folder, list_name)
        if not os.path.isfile(list_path):
            raise FileNotFoundError(f'{list_path} not found; write the data lists first with '
                                    f'`python create_data_lists.py` (see its --help)')
        with open(list_path) as f:
            self.images = json.load(f)
        if not self.images:
            raise ValueError(f'{list_path} lists no images')

        self.transform = ImageTransforms(self.split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                                         blur_sigma=blur_sigma)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = load_image(self.images[i])  # PIL RGB, 8 bits per channel
        return self.transform(img, name=self.images[i])  # (lr_img, hr_img)
