"""Small networks for tests, loaded through `file.py:factory` specs like a user's model."""

import os
import signal

import torch


class TinyNet(torch.nn.Module):
    """An eps-predicting MLP on flat samples of dimension 16 with a time input."""

    sample_shape = (16,)

    def __init__(self, d: int = 16, width: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.l1 = torch.nn.Linear(d + 1, width)
        self.l2 = torch.nn.Linear(width, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)

    def forward(self, x, t):
        h = torch.cat([x, torch.log(t)[:, None]], dim=1)
        return self.l2(torch.tanh(self.l1(h)))


def tiny():
    return TinyNet()


WIDE = 2**20


def wide():
    """TinyNet with 2^20 hidden units: every (point, direction) pair's tangents through its
    hidden layer take 2^20 values, far more than the default guess of 64 D."""
    return TinyNet(width=WIDE)


class Killer(TinyNet):
    """Sends itself SIGKILL on forward call number SPECTRA_TEST_KILL_AT (a crash mid-run); under
    torchrun only on rank SPECTRA_TEST_KILL_RANK when that is set."""

    calls = 0

    def forward(self, x, t):
        Killer.calls += 1
        rank = os.environ.get("SPECTRA_TEST_KILL_RANK")
        mine = rank is None or os.environ.get("RANK") == rank
        if mine and Killer.calls == int(os.environ.get("SPECTRA_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x, t)


def killer():
    return Killer()


class WrongShape(TinyNet):
    def forward(self, x, t):
        return super().forward(x, t)[:, :8]


def wrong_shape():
    return WrongShape()


class NaNLate(TinyNet):
    """Returns NaN at times t > 0.5."""

    def forward(self, x, t):
        out = super().forward(x, t)
        return torch.where(t[:, None] > 0.5, torch.full_like(out, float("nan")), out)


def nan_late():
    return NaNLate()


def raises():
    raise RuntimeError("no weights here")


def not_a_model():
    return 42


class Sleepy(TinyNet):
    """TinyNet that sleeps SPECTRA_TEST_SLEEP seconds per call (a run that takes a while)."""

    def forward(self, x, t):
        import time

        time.sleep(float(os.environ.get("SPECTRA_TEST_SLEEP", "0")))
        return super().forward(x, t)


def sleepy():
    return Sleepy()


def exits():
    """A factory that ends the process as a careless script would."""
    raise SystemExit(3)


class ExitsInForward(TinyNet):
    def forward(self, x, t):
        raise SystemExit(0)


def exits_in_forward():
    return ExitsInForward()


class IntegerOutput(TinyNet):
    def forward(self, x, t):
        return super().forward(x, t).round().long()


def integer_output():
    return IntegerOutput()


class HalfOutput(TinyNet):
    """Returns its prediction in float16, whatever the input's dtype."""

    def forward(self, x, t):
        return super().forward(x, t).half()


def half_output():
    return HalfOutput()


class Unregistered(torch.nn.Module):
    """Weights held in a plain attribute, which state_dict does not see (as careless user code
    does): only the model's values tell two scales apart."""

    sample_shape = (16,)

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.w = scale * torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def forward(self, x, t):
        return torch.tanh(x @ self.w.to(x.dtype)) * torch.log(t)[:, None]


def unregistered():
    return Unregistered(1.0)


def unregistered_scaled():
    return Unregistered(3.0)


class Interrupts(TinyNet):
    """Raises an exception outside Exception's hierarchy."""

    def forward(self, x, t):
        raise GeneratorExit("not a model error")


def interrupts():
    return Interrupts()


def bfloat16():
    """TinyNet stored in bfloat16, as checkpoints of large models often are."""
    return TinyNet().to(torch.bfloat16)
