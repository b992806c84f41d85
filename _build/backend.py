"""PEP 517 backend: setuptools, plus one `.pth` file in every wheel (editable too).

mergekit 0.1.5 has no plugin discovery, so `sftmerge-autoload.pth` arranges for the
sftmerge merge methods to be registered as soon as `mergekit.merge_methods` is
imported, by any program (the stock `mergekit-yaml` included). setuptools cannot
place a file at the root of site-packages for editable installs, hence this wrapper.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 (re-export the full hook set)

PTH_NAME = "sftmerge-autoload.pth"
PTH_LINE = "import sftmerge._autoload\n"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def _add_pth(wheel_directory: str, wheel_name: str) -> str:
    path = os.path.join(wheel_directory, wheel_name)
    tmp = path + ".tmp"
    data = PTH_LINE.encode()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                line = f"{PTH_NAME},{_record_hash(data)},{len(data)}\n"
                content = content.decode().rstrip("\n") + "\n" + line
                content = content.encode()
            dst.writestr(item, content)
        dst.writestr(PTH_NAME, data)
    os.replace(tmp, path)
    return wheel_name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)
