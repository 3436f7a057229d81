import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    """Requirement lines of requirements/<name>.txt (comments stripped)."""
    with open(osp.join(HERE, 'requirements', name)) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def read_version():
    scope = {}
    with open(osp.join(HERE, 'vistok', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='vistok',
    version=read_version(),
    description='Visual tokenizers and token-based visual learning '
    '(mmengine-style research codebase)',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['vistok', 'vistok.*']),
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'mamba': read_requirements('optional.txt'),
        'llm': read_requirements('llm.txt'),
        'tests': read_requirements('tests.txt') + read_requirements('llm.txt'),
    },
    license='Apache-2.0',
    zip_safe=False,
)
