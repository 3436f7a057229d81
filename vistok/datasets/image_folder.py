"""Images in a folder: ImageNet layout (one sub-folder per class), a flat
folder, or a list file."""
import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.fileio import list_from_file

from vistok.registry import DATASETS
from .base import BaseImageDataset

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                  '.tiff', '.webp')


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(extensions))


def _images_under(folder: str, extensions: Sequence[str]) -> list:
    """Image paths under ``folder`` (recursive, sorted, symlinks followed)."""
    paths = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        paths += [osp.join(root, f) for f in sorted(files)
                  if _is_image(f, extensions)]
    return paths


@DATASETS.register_module()
class ImageFolderDataset(BaseImageDataset):
    """Images under ``data_root`` (joined with ``data_prefix['img_path']``).

    Three layouts:

    * class sub-folders (ImageNet): ``root/<class>/**/<image>``; labels are
      positions in ``classes`` (default: the sorted sub-folder names);
    * a flat folder of images (searched recursively): no labels;
    * ``ann_file``: lines ``relative/path.jpg label`` (the label may be
      omitted), paths relative to the image folder.

    Items are dicts with ``img_path``, ``sample_idx`` and, when labelled,
    ``gt_label``. Images are read by the pipeline, which should start with
    ``dict(type='LoadImageRGB')`` (RGB ``(H, W, 3)`` ``uint8``).

    Args:
        data_root: dataset folder.
        ann_file: optional list file, relative to ``data_root``.
        data_prefix: ``dict(img_path=...)``, image folder below ``data_root``.
        classes: class sub-folders to use, in label order.
        extensions: file name endings counted as images (case-insensitive).
        pipeline, test_mode, lazy_init, indices, serialize_data: as in
            ``mmengine.dataset.BaseDataset``.

    Raises:
        FileNotFoundError: the image folder does not exist or holds no image
            (the message names the folder).
    """

    def __init__(self,
                 data_root: str,
                 ann_file: str = '',
                 data_prefix: dict = dict(img_path=''),
                 classes: Optional[Sequence[str]] = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 pipeline=(),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 indices=None,
                 serialize_data: bool = True):
        self.extensions = tuple(e.lower() for e in extensions)
        super().__init__(
            ann_file=ann_file,
            metainfo=None if classes is None else dict(classes=tuple(classes)),
            data_root=data_root,
            data_prefix=data_prefix,
            pipeline=pipeline,
            test_mode=test_mode,
            lazy_init=lazy_init,
            indices=indices,
            serialize_data=serialize_data)

    def load_data_list(self):
        folder = self.data_prefix['img_path'] or self.data_root
        if not osp.isdir(folder):
            raise FileNotFoundError(
                f'ImageFolderDataset: image folder {folder!r} does not exist')
        if self.ann_file:
            data_list = self._load_ann_file(folder)
        else:
            data_list = self._scan(folder)
        if not data_list:
            raise FileNotFoundError(
                f'ImageFolderDataset: no images in {folder!r} '
                f'(ann_file={self.ann_file!r}, extensions={self.extensions})')
        return data_list

    def _load_ann_file(self, folder: str) -> list:
        data_list = []
        for line in list_from_file(self.ann_file):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) == 2 and parts[1].lstrip('-').isdigit():
                data_list.append(dict(img_path=osp.join(folder, parts[0]),
                                      gt_label=int(parts[1])))
            else:
                data_list.append(dict(img_path=osp.join(folder, line)))
        return data_list

    def _scan(self, folder: str) -> list:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        subdirs = [e.name for e in entries if e.is_dir()]
        if not subdirs:  # flat folder: unlabelled images
            return [dict(img_path=p)
                    for p in _images_under(folder, self.extensions)]
        loose = [e.name for e in entries
                 if e.is_file() and _is_image(e.name, self.extensions)]
        if loose:
            raise ValueError(
                f'ImageFolderDataset: {folder!r} holds both class sub-folders '
                f'and {len(loose)} loose images (e.g. {loose[0]!r}); use one '
                f'layout or an ann_file')
        classes = self._metainfo.get('classes')
        if classes is None:
            classes = tuple(subdirs)
            self._metainfo['classes'] = classes
        missing = [c for c in classes if c not in subdirs]
        if missing:
            raise FileNotFoundError(f'ImageFolderDataset: class folders '
                                    f'{missing} are not in {folder!r}')
        return [dict(img_path=path, gt_label=label)
                for label, name in enumerate(classes)
                for path in _images_under(osp.join(folder, name),
                                          self.extensions)]
