"""Print every type registered in vistok, per registry family.

    python tools/analysis/list_modules.py [--family QUANTIZERS ...]
        [--imports projects.TokenUnify.tokenunify ...]
"""
import argparse
import importlib
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))

from vistok.registry import ALL_REGISTRIES  # noqa: E402


def collect(families=None):
    """``{family: [names registered in vistok's scope]}`` (parents' mmengine
    names are not listed)."""
    table = {}
    for name, registry in ALL_REGISTRIES.items():
        if families and name not in families:
            continue
        registry.import_from_location()
        table[name] = sorted(registry._module_dict)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--family', nargs='+', help='only these registries')
    parser.add_argument('--imports', nargs='+', default=[],
                        help='plugin modules to import first')
    args = parser.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    for family, names in collect(args.family).items():
        print(f'{family} ({len(names)})')
        for name in names:
            print(f'  {name}')


if __name__ == '__main__':
    main()
