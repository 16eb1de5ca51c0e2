"""A small decoder-only transformer whose weights live in one flat tensor.

Every parameter is a view into a single flat tensor, allocated by the memory backend inside
the `weights` region. Backing weights up or restoring them is then one contiguous copy, and
releasing the region's storage leaves every view a valid tensor object.

Architecture: token embedding, pre-norm blocks (RMSNorm, multi-head attention with rotary
positions, RMSNorm, GELU MLP), a final RMSNorm and an untied output head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from node.engine.kv_pool import KVSlot
from node.engine.shape import ModelShape

_ROPE_BASE = 10000.0
_NORM_EPS = 1e-5


@dataclass(frozen=True)
class ModelConfig:
    shape: ModelShape
    vocab: int
    dtype: torch.dtype
    device: torch.device

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Name and shape of each parameter, in the order they sit in the flat tensor."""
        w, mlp, vocab = self.shape.width, self.shape.mlp_width, self.vocab
        entries: list[tuple[str, tuple[int, ...]]] = [("embed", (vocab, w))]
        for i in range(self.shape.layers):
            entries += [
                (f"layers.{i}.attn_norm", (w,)),
                (f"layers.{i}.wq", (w, w)),
                (f"layers.{i}.wk", (w, w)),
                (f"layers.{i}.wv", (w, w)),
                (f"layers.{i}.wo", (w, w)),
                (f"layers.{i}.mlp_norm", (w,)),
                (f"layers.{i}.w_up", (mlp, w)),
                (f"layers.{i}.w_down", (w, mlp)),
            ]
        entries += [("final_norm", (w,)), ("lm_head", (vocab, w))]
        return entries

    def numel(self) -> int:
        return sum(math.prod(shape) for _, shape in self.layout())


class TransformerWeights:
    """Named views into the flat weights tensor."""

    def __init__(self, config: ModelConfig, flat: torch.Tensor) -> None:
        if flat.numel() != config.numel():
            raise ValueError(f"flat weights hold {flat.numel()} values, need {config.numel()}")
        self.config = config
        self.flat = flat
        self.params: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape in config.layout():
            size = math.prod(shape)
            self.params[name] = flat[offset : offset + size].view(shape)
            offset += size
        self.layers: list[dict[str, torch.Tensor]] = [
            {
                name.removeprefix(f"layers.{i}."): param
                for name, param in self.params.items()
                if name.startswith(f"layers.{i}.")
            }
            for i in range(config.shape.layers)
        ]

    def init_seeded(self, seed: int) -> None:
        """Deterministic init: the same seed, shape and device give the same bytes."""
        generator = torch.Generator(device=self.config.device).manual_seed(seed)
        for name, param in self.params.items():
            if name.endswith("norm"):
                param.fill_(1.0)
            else:
                std = 1.0 if name == "embed" else 1.0 / math.sqrt(param.shape[1])
                param.normal_(0.0, std, generator=generator)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + _NORM_EPS)
    return normed.to(x.dtype) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Transformer:
    def __init__(self, weights: TransformerWeights) -> None:
        self.weights = weights
        self.config = weights.config
        head_dim = self.config.shape.head_dim
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
        self._inv_freq = (1.0 / (_ROPE_BASE**exponents)).to(self.config.device)

    @torch.inference_mode()
    def prefill(self, input_ids: list[int], kv: KVSlot) -> torch.Tensor:
        """Fill `kv` with the prompt's keys and values; return the last position's logits."""
        return self._forward(input_ids, start=0, kv=kv)

    @torch.inference_mode()
    def decode(self, token_id: int, position: int, kv: KVSlot) -> torch.Tensor:
        """One token at `position`, attending to the slot's first `position` entries."""
        return self._forward([token_id], start=position, kv=kv)

    def _forward(self, token_ids: list[int], start: int, kv: KVSlot) -> torch.Tensor:
        # The causal mask below is only right for a whole prompt from position 0 or one token.
        assert start == 0 or len(token_ids) == 1
        p = self.weights.params
        shape = self.config.shape
        count = len(token_ids)
        end = start + count
        ids = torch.tensor(token_ids, device=self.config.device)
        x = p["embed"][ids]
        angles = torch.outer(
            torch.arange(start, end, device=self.config.device).float(), self._inv_freq
        )
        cos = angles.cos().to(x.dtype)[:, None, :]
        sin = angles.sin().to(x.dtype)[:, None, :]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(count, shape.heads, shape.head_dim)

        for i, layer in enumerate(self.weights.layers):
            h = _rms_norm(x, layer["attn_norm"])
            q = _rotate(heads(h @ layer["wq"].T), cos, sin)
            kv.keys[i, start:end] = _rotate(heads(h @ layer["wk"].T), cos, sin)
            kv.values[i, start:end] = heads(h @ layer["wv"].T)
            # [positions, heads, dim] -> [heads, positions, dim] for attention.
            attended = F.scaled_dot_product_attention(
                q.transpose(0, 1),
                kv.keys[i, :end].transpose(0, 1),
                kv.values[i, :end].transpose(0, 1),
                is_causal=count > 1,
            )
            x = x + attended.transpose(0, 1).reshape(count, shape.width) @ layer["wo"].T
            h = _rms_norm(x, layer["mlp_norm"])
            x = x + F.gelu(h @ layer["w_up"].T) @ layer["w_down"].T
        last = _rms_norm(x[-1], p["final_norm"])
        return (last @ p["lm_head"].T).float()
