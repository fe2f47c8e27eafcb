"""The pipeline's hypernetworks: those set apart from the prompt (set_hypernets, the CLI's
--hypernet) and the prompt's <hypernet:name:multiplier> tags (A1111's extra network), found in the
'hypernetworks' folder of hypernet_folders and hooked onto the network only while it samples."""
from __future__ import annotations

from pathlib import Path

from ..adapters.hypernetwork import HypernetCache, hypernetworks_applied, prompt_hypernet_tags, tag_strength
from .lora_methods import find_in_folders


class HypernetMethods:
    """A Pipeline's hypernetwork handling (a part of Pipeline, kept in its own file)."""

    hypernet_folders = None  # a ModelFolders (its "hypernetworks" kind) or a list of plain folders
    _hypernet_specs: tuple = ()  # (path, strength) given by set_hypernets
    _hypernets: tuple = ()       # (Hypernetwork, strength) of the running generation
    _hypernet_cache: HypernetCache | None = None

    def set_hypernets(self, specs) -> None:
        """(path, strength) pairs applied to every generation from now on, before the prompt's tags."""
        self._hypernet_specs = tuple((Path(p), float(s)) for p, s in specs)

    @property
    def hypernet_specs(self) -> list[tuple[Path, float]]:
        """The hypernetworks set_hypernets gave (the prompt's tags not included)."""
        return list(self._hypernet_specs)

    def resolve_hypernet(self, name: str) -> Path:
        """A hypernetwork by prompt name, in the hypernetworks folder of hypernet_folders."""
        return find_in_folders(self.hypernet_folders, "hypernetworks", name,
                               f"prompt: <hypernet:{name}> needs a models folder (with a hypernetworks folder) "
                               "to look it up in")

    def apply_hypernets(self, prompt: str = "") -> None:
        """Read (or take from the cache) the explicit and the prompt's hypernetworks; they act on
        the network while it samples (hypernets_hooked). Files are checked here, before sampling."""
        wanted = list(self._hypernet_specs) + [(self.resolve_hypernet(t.name), tag_strength(t))
                                               for t in prompt_hypernet_tags(prompt)]
        if wanted:
            self.family.require("hypernetwork", "hypernet")
        if self._hypernet_cache is None:
            self._hypernet_cache = HypernetCache()
        self._hypernets = tuple((self._hypernet_cache.get(p), s) for p, s in wanted)

    @property
    def hypernet_names(self) -> list[tuple[str, float]]:
        """(name, strength) of the hypernetworks the last generation applied."""
        return [(hn.name, s) for hn, s in self._hypernets]

    def hypernets_hooked(self):
        """A context manager: the network's attention k/v inputs go through the hypernetworks."""
        return hypernetworks_applied(self.family.network(self.model), self._hypernets)
