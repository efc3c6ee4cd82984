"""Models in the conventions of other codebases, with exactly known Jacobians, for tests.

All share one zero-mean Gaussian on a linear subspace of R^16: covariance S = U diag(LAM) U^T.
Its exact score at alpha x0 + sigma eps is -(alpha^2 S + sigma^2 I)^{-1} x (theory.md 3.2).
Every formula of the conventions (EDM's c_skip/c_out/c_in/c_noise, score_sde's time labels and
VP marginals) is written out here, independently of spectra's code.
"""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from spectra.models.edm import EDMPrecond

D = 16
LAM = np.array([2.0, 2.0, 2.0, 0.3, 0.3, 0.3])
U = np.linalg.qr(np.random.default_rng(11).standard_normal((D, len(LAM))))[0]
SIGMA_DATA = 0.5


def cov() -> torch.Tensor:
    return torch.as_tensor(U @ np.diag(LAM) @ U.T)


def solve(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, scale=1.0) -> torch.Tensor:
    """(alpha^2 S + sigma^2 I)^{-1} x per sample, x (B, D), alpha and sigma (B,), by the
    eigendecomposition: U diag(1 / (alpha^2 LAM + sigma^2)) U^T x + (x - U U^T x) / sigma^2.
    (Not torch.linalg.solve: its forward-mode rule under nested vmap is wrong in torch 2.13.)
    `scale` multiplies LAM (the class-conditional model's classes)."""
    u = torch.as_tensor(U).to(x)
    lam = torch.as_tensor(LAM).to(x) * scale
    coef = x @ u  # (B, m)
    inside = (coef / (alpha[:, None] ** 2 * lam + sigma[:, None] ** 2)) @ u.T
    return inside + (x - coef @ u.T) / sigma[:, None] ** 2


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] at alpha = 1: S (S + sigma^2 I)^{-1} x."""
    return solve(x, torch.ones_like(sigma), sigma) @ cov().to(x)  # S is symmetric


class EdmStyle(torch.nn.Module):
    """Like EDM's EDMPrecond: forward(x, sigma, class_labels=None, force_fp32=False) -> D(x; sigma),
    with a `use_fp16` flag, computing in float32 whatever the weights (EDM casts the network
    input); refuses to run unless force_fp32 is set (EDM would run in fp16 otherwise)."""

    sample_shape = (D,)
    sigma_min, sigma_max, sigma_data = 0.01, 20.0, SIGMA_DATA
    use_fp16 = False

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        if not force_fp32:
            raise RuntimeError("force_fp32 was not set")
        x, sigma = x.to(torch.float32), sigma.to(torch.float32)
        return self.scale * exact_denoiser(x, sigma)


class EdmConditional(torch.nn.Module):
    """A class-conditional EDMPrecond-like denoiser: class c (EDM's one-hot class_labels, shape
    (B or 1, label_dim)) is the Gaussian with covariance (c + 1) S, so its exact denoiser is
    (c + 1) S ((c + 1) S + sigma^2 I)^{-1} x; class_labels None means zeros, as in EDM."""

    sample_shape = (D,)
    sigma_min, sigma_max, sigma_data = 0.01, 20.0, SIGMA_DATA
    label_dim = 3

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        if class_labels is None:
            class_labels = torch.zeros((1, self.label_dim), dtype=x.dtype)
        factor = (class_labels.reshape(-1, self.label_dim) @ torch.arange(1.0, 4.0).to(x))[0]
        inv = solve(x, torch.ones_like(sigma), sigma, factor)
        return self.scale * factor * (inv @ cov().to(x))


def edm_conditional():
    return EdmConditional()


class RawNetwork(torch.nn.Module):
    """F(y, c_noise) chosen so that c_skip x + c_out F(c_in x, c_noise) is the exact denoiser."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, y, c_noise):
        sigma = torch.exp(4 * c_noise)
        total = sigma**2 + SIGMA_DATA**2
        c_skip, c_out, c_in = SIGMA_DATA**2 / total, sigma * SIGMA_DATA / total.sqrt(), 1 / total.sqrt()
        x = y / c_in[:, None]
        return self.scale * (exact_denoiser(x, sigma) - c_skip[:, None] * x) / c_out[:, None]


def edm_style():
    return EdmStyle()


def edm_from_raw():
    net = EDMPrecond(RawNetwork(), sigma_data=SIGMA_DATA, sigma_min=0.01, sigma_max=20.0)
    net.sample_shape = (D,)
    return net


class ScoreSdeVE(torch.nn.Module):
    """score_sde VE convention: called with label = sigma(t), returns the score."""

    sample_shape = (D,)

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, labels):
        return -self.scale * solve(x, torch.ones_like(labels), labels)


class ScoreSdeVP(torch.nn.Module):
    """score_sde VP convention: called with label = 999 t, returns eps = -sigma(t) score."""

    sample_shape = (D,)
    beta_min, beta_max = 0.1, 20.0

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, labels):
        t = labels / 999
        log_mean = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        alpha = torch.exp(log_mean)
        sigma = torch.sqrt(1 - torch.exp(2 * log_mean))
        return self.scale * sigma[:, None] * solve(x, alpha, sigma)


def score_sde_ve():
    return ScoreSdeVE()


def score_sde_vp():
    return ScoreSdeVP()


def vp_alpha_sigma(t: float) -> tuple[float, float]:
    log_mean = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return math.exp(log_mean), math.sqrt(1 - math.exp(2 * log_mean))


# --- models that torch.func cannot transform as they are ------------------------------------
class Attention(torch.nn.Module):
    """Self-attention over the 4 pixels of a (4, 2, 2) sample through F.scaled_dot_product_attention,
    then a GroupNorm (forward-mode AD of the CPU fused attention kernel is not implemented)."""

    sample_shape = (4, 2, 2)

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.qkv = torch.nn.Linear(4, 12)
        self.norm = torch.nn.GroupNorm(2, 4)
        with torch.no_grad():
            for p in self.qkv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)

    def forward(self, x, t):
        b = x.shape[0]
        tokens = x.flatten(2).transpose(1, 2)  # (B, 4 pixels, 4 channels)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return self.norm(x + a.transpose(1, 2).reshape(b, 4, 2, 2))


def attention():
    return Attention()


def attention_singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of the attention model's Jacobian at x (16,), float64, by
    torch.autograd.functional.jacobian (a reference that does not use spectra)."""
    net = attention().double()
    t = torch.ones(1, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: net(z[None], t)[0], torch.as_tensor(x))
    return torch.linalg.svdvals(jac.reshape(16, 16)).numpy()


W1 = np.random.default_rng(5).standard_normal((D, D)) / 4
W2 = np.random.default_rng(6).standard_normal((D, D)) / 4


def tanh_jacobian(x: np.ndarray) -> np.ndarray:
    """The exact Jacobian W2 diag(1 - tanh(W1 x)^2) W1 of the models below, at x (D,)."""
    return W2 @ np.diag(1 - np.tanh(W1 @ x) ** 2) @ W1


class TanhNoJvp(torch.autograd.Function):
    """tanh with a backward rule only: no jvp (forward mode) and no vmap rule."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class TanhOldStyle(torch.autograd.Function):
    """tanh as an old-style Function (forward takes ctx): no torch.func transform accepts it."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class TanhSlowJvp(TanhNoJvp):
    """TanhNoJvp with a forward-mode rule that costs SLOW_JVP_S seconds per call (and a vmap rule):
    a model where reverse mode is far cheaper than forward mode."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.y = output

    @staticmethod
    def jvp(ctx, tangent):
        time.sleep(SLOW_JVP_S)
        return tangent * (1 - ctx.y * ctx.y)


SLOW_JVP_S = 0.02


class TanhNet(torch.nn.Module):
    """Score model W2 f(W1 x) (time ignored) with f one of the tanh variants."""

    sample_shape = (D,)

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.w1 = torch.nn.Parameter(torch.as_tensor(W1))
        self.w2 = torch.nn.Parameter(torch.as_tensor(W2))

    def forward(self, x, t):
        h = x @ self.w1.T
        if self.kind == "no_jvp":
            h = TanhNoJvp.apply(h)
        elif self.kind == "old_style":
            h = TanhOldStyle.apply(h)
        elif self.kind == "slow_jvp":
            h = TanhSlowJvp.apply(h)
        elif self.kind in ("plain", "graph_break"):
            if self.kind == "graph_break":
                torch._dynamo.graph_break()  # a no-op in eager mode; torch.compile cannot trace it
            h = torch.tanh(h)
        else:  # numpy: no autodiff at all
            h = torch.as_tensor(np.tanh(h.detach().cpu().numpy()), dtype=x.dtype)
        return h @ self.w2.T


def tanh_no_jvp():
    return TanhNet("no_jvp")


def tanh_slow_jvp():
    return TanhNet("slow_jvp")


def tanh_old_style():
    return TanhNet("old_style")


def tanh_numpy():
    return TanhNet("numpy")


def tanh_plain():
    return TanhNet("plain")


def tanh_graph_break():
    return TanhNet("graph_break")
