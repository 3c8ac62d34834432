"Build openmixup_nb from the packaging metadata in settings.ini (nbdev 3 keeps its own settings in pyproject.toml)."
from configparser import ConfigParser
from pathlib import Path
import re
import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=['='])
cfg.read(here/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

version = re.search(r'__version__\s*=\s*["\']([^"\']+)', (here/cfg['lib_name']/'__init__.py').read_text()).group(1)
if version != cfg['version']:
    raise ValueError(f"settings.ini version {cfg['version']} differs from {cfg['lib_name']}/__init__.py {version}")

setuptools.setup(
    version=version,
    author=cfg['author'], author_email=cfg['author_email'],
    license='Apache-2.0',
    keywords=cfg['keywords'].split(),
    classifiers=['Development Status :: 3 - Alpha', 'Intended Audience :: Science/Research',
                 'Programming Language :: Python :: 3', 'Programming Language :: Python :: 3 :: Only',
                 'Topic :: Scientific/Engineering :: Artificial Intelligence'],
    packages=setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name']+'.*']),
    include_package_data=True,
    install_requires=cfg['requirements'].split(),
    extras_require={'dev': cfg['dev_requirements'].split()},
    entry_points={
        'console_scripts': cfg['console_scripts'].split(),
        'nbdev': [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"],
    },
    zip_safe=False,
)
