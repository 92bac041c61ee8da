"""Source types by spec `type`. Each builds one or more TextSource objects (see base.py)."""

from openseek_nanochat.convert.sources.base import Batch, TextSource
from openseek_nanochat.convert.spec import ConvertSpec, FilesSource, HFSource, MegatronSource
from openseek_nanochat.settings import Settings


def build_sources(spec: ConvertSpec, settings: Settings) -> list[TextSource]:
    sources: list[TextSource] = []
    for source_spec in spec.sources:
        if isinstance(source_spec, FilesSource):
            from openseek_nanochat.convert.sources.files import FilesTextSource

            sources.append(FilesTextSource(source_spec, settings, on_error=spec.on_error))
        elif isinstance(source_spec, HFSource):
            from openseek_nanochat.convert.sources.hf import HFTextSource

            sources.append(HFTextSource(source_spec, settings))
        elif isinstance(source_spec, MegatronSource):
            from openseek_nanochat.convert.sources.megatron import build_megatron_sources

            sources.extend(build_megatron_sources(source_spec, settings))
    return sources


__all__ = ["Batch", "TextSource", "build_sources"]
