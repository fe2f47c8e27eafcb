"""The pipeline's LoRAs: those set apart from the prompt (set_loras) and the prompt's <lora:name:w>
tags, found in its LoRA folders and applied to its weights before each generation."""
from __future__ import annotations

from pathlib import Path

from ..adapters.lora import LoraSet, LoraSpec, prompt_lora_tags, specs_from_tags
from ..errors import InvalidArgument


class LoraMethods:
    """A Pipeline's LoRA handling (a part of Pipeline, kept in its own file)."""

    def set_loras(self, specs: list[LoraSpec]) -> None:
        """LoRAs applied to every generation from now on, before the prompt's own <lora:…> tags."""
        self._lora_specs = [s if isinstance(s, LoraSpec) else LoraSpec(s) for s in specs]

    @property
    def lora_specs(self) -> list[LoraSpec]:
        """The LoRAs set_loras gave (the prompt's tags not included)."""
        return list(self._lora_specs)

    @property
    def lora_reports(self) -> list:
        """What the last generation applied (LoraReport per file: strengths, unmatched keys)."""
        return [] if self._lora_set is None else self._lora_set.reports

    def lora_hashes(self) -> dict[str, str]:
        """A1111's "Lora hashes" of the LoRAs the last generation applied: name -> short hash."""
        from ..library.hashes import lora_hash
        return {r.name: lora_hash(r.path) for r in self.lora_reports}

    def resolve_lora(self, name: str) -> Path:
        """A LoRA by prompt name, through lora_folders (a ModelFolders or a list of folders)."""
        return find_in_folders(self.lora_folders, "loras", name,
                               f"prompt: <lora:{name}> needs a LoRA folder (loras_dir) to look it up in")

    def apply_loras(self, prompt: str = "") -> None:
        """Patch in exactly the explicit + prompt LoRAs (restoring the base weights first when the
        set changed); encoded prompts depend on the text encoder, so the cache goes with it.
        Generation calls this itself; callers that use the modules directly call it first.
        The prompt's hypernetworks are read here too (they act while the network samples)."""
        self.apply_hypernets(prompt)
        specs = self._lora_specs + specs_from_tags(prompt_lora_tags(prompt), self.resolve_lora)
        if not specs and self._lora_set is None:
            return
        if self._lora_set is None:
            self.family.require("lora", "lora")
            self._lora_set = LoraSet(self.model)
        self._lora_set.apply(specs)
        if self._lora_set.changed:
            self._cond_cache = {}


def find_in_folders(folders, kind: str, name: str, missing: str) -> Path:
    """A model of `kind` by prompt name in `folders` (a ModelFolders, or plain folders holding that
    kind directly); InvalidArgument(`missing`) when there are none."""
    from ..library.models_dir import ModelFolders
    if folders is None:
        raise InvalidArgument(missing)
    if not isinstance(folders, ModelFolders):
        dirs = [folders] if isinstance(folders, (str, Path)) else list(folders)
        folders = ModelFolders(None, include_builtin=False, extra={kind: [Path(d) for d in dirs]})
    try:
        return folders.resolve(kind, name)
    except InvalidArgument as e:
        raise InvalidArgument(f"prompt: {e}") from None
