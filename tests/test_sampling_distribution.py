"""Sampling at temperature T and nucleus top_p draws from the right distribution, and reports the right log-probs.

The expected distribution is computed here in NumPy (float64) from the logits alone: p = softmax(logits / T), the
nucleus is the smallest set of highest-probability tokens whose mass reaches top_p, renormalised. Many rows are
sampled at once and a chi-square goodness-of-fit test compares the counts with it, both through
`sampler.sample_logits` directly and through the public `sampler.sample` loop with a model whose every step returns
fixed logits. The logits are chosen so that T = 0.2 / 1 / 2 give strongly different distributions (a wrong or
doubly applied temperature, or a nucleus one token off, moves the statistic by hundreds to hundreds of thousands,
against a critical value of ~25), while the smallest bin still expects >= 150 draws.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrl_vlm.models import sampler
from jaxrl_vlm.models.layers import KVCache

# Token ranks 0..5. Cumulative masses (T=0.2: .643 .879 .966 ...; T=1: .269 .489 .669 .810 .919 1; T=2: ... .744
# .882 1) put top_p = 0.9 well inside a gap, so the nucleus has 3 / 5 / 6 tokens and the token at its edge carries
# 9% / 12% / 12% of its mass: dropping it, or adding the next one, is unmistakable.
BASE_LOGITS = np.array([0.0, -0.2, -0.4, -0.65, -0.9, -1.2])
VOCAB = BASE_LOGITS.size
ROWS = 100_000
P_MIN = 1e-3  # the correct code's p-values with the fixed seeds below: 0.08-0.94


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def expected_rank_distribution(temperature: float, top_p: float) -> np.ndarray:
    """float64[V] over the ranks of BASE_LOGITS: softmax(logits / T), cut to the top-p nucleus, renormalised."""
    p = softmax(BASE_LOGITS / temperature)
    if top_p >= 1.0:
        return p
    order = np.argsort(-p)
    mass = np.cumsum(p[order])
    # The test's premise: no cumulative mass sits near top_p, so float32 rounding cannot move the nucleus edge.
    assert np.min(np.abs(mass - top_p)) > 5e-3
    size = int(np.sum(mass < top_p)) + 1  # tokens before the mass first reaches top_p, plus the one that reaches it
    q = np.zeros_like(p)
    q[order[:size]] = p[order[:size]]
    return q / q.sum()


def permuted_rows(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits [rows, V]: BASE_LOGITS scattered by a random permutation per row (so a bug that confuses
    sorted and vocabulary order shows) plus a random per-row offset (softmax ignores it); and rank[rows, V], the
    rank of each token id."""
    rng = np.random.RandomState(seed)
    rank = np.argsort(rng.rand(rows, VOCAB), axis=1)  # rank[i, token]: a random permutation per row
    logits = BASE_LOGITS[rank] + rng.uniform(-3, 3, (rows, 1))
    return logits.astype(np.float32), rank


def assert_matches(ranks: np.ndarray, temperature: float, top_p: float) -> float:
    """Chi-square test of sampled ranks against the expected distribution; returns the p-value."""
    expected = expected_rank_distribution(temperature, top_p)
    counts = np.bincount(ranks.ravel(), minlength=VOCAB)
    outside = counts[expected == 0].sum()
    assert outside == 0, f"{outside} draws outside the nucleus: counts {counts}, expected {expected}"
    inside = expected > 0
    result = stats.chisquare(counts[inside], expected[inside] * ranks.size)
    assert result.pvalue > P_MIN, (f"T={temperature} top_p={top_p}: chi2={result.statistic:.1f} "
                                   f"p={result.pvalue:.2e}; counts {counts / ranks.size} vs expected {expected}")
    return result.pvalue


def reference_logprobs(logits: np.ndarray, tokens: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(logits / T) at the tokens (before any nucleus truncation), float64."""
    scaled = logits.astype(np.float64) / temperature
    logz = np.log(np.sum(np.exp(scaled - scaled.max(-1, keepdims=True)), -1)) + scaled.max(-1)
    return np.take_along_axis(scaled, tokens, axis=-1) - logz[..., None]


_sample_logits = jax.jit(sampler.sample_logits)

CASES = [(0.2, 1.0), (1.0, 1.0), (2.0, 1.0), (0.2, 0.9), (1.0, 0.9), (2.0, 0.9)]


@pytest.mark.parametrize("temperature,top_p", CASES)
def test_sample_logits_distribution_and_logprobs(temperature, top_p):
    """sample_logits draws follow softmax(logits / T) cut to the top-p nucleus, and their log-probs are
    log softmax(logits / T) at the drawn token (max error measured 1.2e-6). Measured under breaks: a temperature
    that is ignored (T=0.2: chi2 6e5; T=2: 3.6e3) or applied twice (T=0.2: 5e4; T=2: 1e3), a nucleus one token short
    (chi2 1e4-1.6e4) or one token long (2-8% of draws outside it), a nucleus of the unscaled logits or in sorted
    instead of vocabulary order (draws outside it), log-probs that ignore T (off by 0.4-3.9) or are taken after the
    truncation (0.03-0.08). The correct code's p-values with these seeds: 0.16-0.94."""
    logits, rank = permuted_rows(ROWS, seed=int(temperature * 10 + top_p * 100))
    tokens, logp = _sample_logits(jnp.asarray(logits), jax.random.PRNGKey(int(temperature * 10) + 3),
                                  jnp.float32(temperature), jnp.float32(top_p))
    tokens, logp = np.asarray(tokens), np.asarray(logp)
    assert tokens.shape == logp.shape == (ROWS,) and tokens.dtype == np.int32
    assert_matches(np.take_along_axis(rank, tokens[:, None], axis=1), temperature, top_p)
    np.testing.assert_allclose(logp, reference_logprobs(logits, tokens[:, None], temperature)[:, 0], atol=1e-5)


def test_greedy_takes_the_argmax_with_untempered_logprob():
    """temperature 0: the argmax token (whatever top_p) with its log-prob under softmax(logits). Catches a greedy
    branch that samples, or scales its log-probs by a placeholder temperature."""
    logits, rank = permuted_rows(512, seed=1)
    tokens, logp = _sample_logits(jnp.asarray(logits), jax.random.PRNGKey(0), jnp.float32(0.0), jnp.float32(0.9))
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(np.take_along_axis(rank, tokens[:, None], axis=1)[:, 0], 0)
    np.testing.assert_allclose(np.asarray(logp), reference_logprobs(logits, tokens[:, None], 1.0)[:, 0], atol=1e-5)


@dataclasses.dataclass(frozen=True)
class FixedLogitsModel:
    """A DecodeModel whose every step returns its params, float32 logits [B, V], whatever the tokens: each sampled
    column is then an independent draw from the same per-row distribution."""

    def decode_params(self, params):
        return params

    def step(self, params, input_ids, token_mask, cache, extra):
        return params, cache

    def init_cache(self, batch, capacity):
        return KVCache(k=(), v=(), valid=jnp.zeros((batch, capacity), bool), next_pos=jnp.zeros((batch,), jnp.int32),
                       index=jnp.zeros((), jnp.int32))


@pytest.mark.parametrize("temperature,top_p", [(0.2, 0.9), (2.0, 1.0), (1.0, 0.9)])
def test_public_sample_loop_distribution_and_logprobs(temperature, top_p):
    """sampler.sample (prefill, then the decode loop) at PPO's T=0.2 / top_p=0.9 and others: every generated column
    follows the expected distribution and carries log softmax(logits / T) at its token. The same bugs as above, seen
    through the public API (survives a rewrite of sample_logits), plus a decode loop that drops the temperature or
    top_p after the first token (each column is tested on its own)."""
    rows, new = 20_000, 5
    logits, rank = permuted_rows(rows, seed=int(temperature * 10 + top_p * 100) + 7)
    out = sampler.sample(FixedLogitsModel(), jnp.asarray(logits), np.ones((rows, 2), np.int32),
                         np.ones((rows, 2), np.int32), max_new_tokens=new, eos_ids=[], pad_id=0,
                         temperature=temperature, top_p=top_p, seed=11)
    assert out.tokens.shape == out.logprobs.shape == (rows, new)
    np.testing.assert_array_equal(out.lengths, new)
    ranks = np.take_along_axis(rank, out.tokens, axis=1)
    assert_matches(ranks, temperature, top_p)
    for column in (0, new - 1):
        assert_matches(ranks[:, column], temperature, top_p)
    np.testing.assert_allclose(out.logprobs, reference_logprobs(logits, out.tokens, temperature), atol=1e-5)
