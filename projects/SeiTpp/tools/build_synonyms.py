"""Build the token synonym dictionary of SeiT's Token-EDA from a codebook.

    python projects/SeiTpp/tools/build_synonyms.py CODEBOOK OUT.json \\
        [--top-k 5] [--key quantizer.embedding.weight]

CODEBOOK is a ``.npy``, ``.safetensors`` or torch file holding the
``(num_codes, dim)`` code vectors (SeiT's released ``codebook.ckpt`` is a
391 x 32 tensor) or a state dict with them under ``--key``. OUT.json maps
each code id (a string) to its ``--top-k`` most cosine-similar other codes,
ties to the lower index, in the layout of SeiT's ``codebook-synonyms.json``;
the bytes depend only on the codebook and ``--top-k`` (rule:
``projects/SeiTpp/seitpp/synonyms.py``). Prints a one-line JSON summary.
"""
import argparse
import hashlib
import json
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
sys.path.insert(0, REPO_ROOT)


def parse_args(argv=None):
    from projects.SeiTpp.seitpp.synonyms import SEIT_SYNONYM_TOP_K
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('codebook', help='codebook file (.npy, '
                        '.safetensors or torch file)')
    parser.add_argument('out', help='output JSON file')
    parser.add_argument('--top-k', type=int, default=SEIT_SYNONYM_TOP_K,
                        help='synonyms per code (default: SeiT\'s thres, '
                        '%(default)s)')
    parser.add_argument('--key', default=None,
                        help='the codebook tensor\'s key when the file holds '
                        'a dict of tensors')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from projects.SeiTpp.seitpp.synonyms import (
        build_synonyms,
        load_codebook,
        write_synonyms,
    )
    codebook = load_codebook(args.codebook, key=args.key)
    table = build_synonyms(codebook, top_k=args.top_k)
    write_synonyms(table, args.out)
    with open(args.out, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    summary = dict(out=args.out, num_codes=int(table.shape[0]),
                   dim=int(codebook.shape[1]), top_k=int(table.shape[1]),
                   sha256=digest)
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
