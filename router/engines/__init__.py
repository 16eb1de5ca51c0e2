"""The engines a node can run, by the name a fleet config gives them (`engine:`)."""

from pdfleet.vocabulary import EngineName
from router.engines.base import Engine
from router.engines.sglang import SGLang
from router.engines.vllm import VLLM

ENGINES: dict[EngineName, type[Engine]] = {engine.name: engine for engine in (SGLang, VLLM)}
