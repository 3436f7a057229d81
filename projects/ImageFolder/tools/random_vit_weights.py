"""Write the state dict of a random-initialised timm ViT: the stand-in for a
pretrained DINOv2 file in the CPU demo and the tests (nothing downloads).

    python projects/ImageFolder/tools/random_vit_weights.py MODEL OUT \
        [--img-size 64] [--patch-size 8] [--depth 2] [--embed-dim 64]
        [--num-heads 2] [--seed 0]
"""
import argparse
import os
import os.path as osp

import timm
import torch


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='timm architecture, e.g. '
                        'vit_tiny_patch16_224')
    parser.add_argument('out', help='output .pth file')
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--patch-size', type=int, default=None)
    parser.add_argument('--depth', type=int, default=None)
    parser.add_argument('--embed-dim', type=int, default=None)
    parser.add_argument('--num-heads', type=int, default=None)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (('img_size', args.img_size),
                                ('patch_size', args.patch_size),
                                ('depth', args.depth),
                                ('embed_dim', args.embed_dim),
                                ('num_heads', args.num_heads))
              if v is not None}
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=0,
                              **kwargs)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f'wrote {args.out} ({args.model}, {kwargs}, seed {args.seed})')
    return args.out


if __name__ == '__main__':
    main()
