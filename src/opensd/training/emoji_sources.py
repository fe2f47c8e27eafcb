"""Pinned emoji sources (npm packages, licences, style phrases), the styles and the shared errors.

Part of :mod:`opensd.training.emoji_data`, which re-exports every public name here. The lowest
layer: it imports nothing else from the emoji modules.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import OpenSDError

IMAGE_SIZE = 64

# Canonical style order: style_id is the index here, whatever subset of sources is built.
STYLES = ("google", "twitter")


@dataclass(frozen=True)
class SourceSpec:
    style: str
    package: str
    version: str
    integrity: str  # npm's sha512 SRI for the pinned version (from `npm view NAME@VERSION dist.integrity`)
    style_phrase: str
    artwork: str
    image_license: str  # SPDX id of the artwork's licence
    license_url: str
    attribution: str


SOURCES: dict[str, SourceSpec] = {
    "google": SourceSpec(
        style="google",
        package="emoji-datasource-google",
        version="16.0.0",
        integrity="sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        style_phrase="noto emoji style",
        artwork="Noto Emoji (the googlefonts/noto-emoji project on GitHub)",
        image_license="Apache-2.0",
        license_url="https://www.apache.org/licenses/LICENSE-2.0",
        attribution=(
            "Emoji images from Noto Emoji, Copyright Google LLC, licensed under the Apache License, "
            "Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0); obtained from the npm package "
            "emoji-datasource-google (emoji-data by Cal Henderson, MIT). Modified: alpha composited "
            "onto white, 64x64 RGB."
        ),
    ),
    "twitter": SourceSpec(
        style="twitter",
        package="emoji-datasource-twitter",
        version="16.0.0",
        integrity="sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        style_phrase="twemoji style",
        artwork="Twemoji (the jdecked/twemoji project on GitHub)",
        image_license="CC-BY-4.0",
        license_url="https://creativecommons.org/licenses/by/4.0/",
        attribution=(
            "Twemoji graphics, Copyright Twitter, Inc and other contributors, licensed under CC-BY 4.0 "
            "(https://creativecommons.org/licenses/by/4.0/); obtained from the npm package "
            "emoji-datasource-twitter (emoji-data by Cal Henderson, MIT). Modified: alpha composited "
            "onto white, 64x64 RGB."
        ),
    ),
}

# -- errors -------------------------------------------------------------------------------------


class EmojiDataError(OpenSDError):
    """The emoji dataset cannot be fetched, read or built."""


class NpmNotFound(EmojiDataError):
    """The npm client is not installed / not on PATH."""


class RegistryError(EmojiDataError):
    """npm could not fetch a package (registry unreachable, version missing, npm failure)."""


class MalformedTarball(EmojiDataError):
    """A tarball is truncated, fails its integrity check, or does not have the emoji-datasource layout."""


class CacheMissing(EmojiDataError):
    """load_split found no complete, matching build in the cache folder."""
