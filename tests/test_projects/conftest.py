"""Fixtures shared by the plugin tests."""
import os.path as osp
import runpy

import pytest

from _helpers import REPO_ROOT


@pytest.fixture(scope='session')
def imagefolder_teacher(tmp_path_factory):
    """A random tiny timm ViT saved as the stand-in for ImageFolder's DINOv2
    semantic teacher (the tiny configs' architecture)."""
    tool = runpy.run_path(osp.join(
        REPO_ROOT, 'projects/ImageFolder/tools/random_vit_weights.py'))
    path = str(tmp_path_factory.mktemp('teacher') / 'teacher.pth')
    return tool['main'](['vit_tiny_patch16_224', path, '--img-size', '64',
                         '--patch-size', '8', '--depth', '2', '--embed-dim',
                         '64', '--num-heads', '2'])
