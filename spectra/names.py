"""The names and defaults the command line offers, in a module that imports nothing heavy, so that
`spectra --help` and every error on options answer without importing torch, scipy or matplotlib.
The modules that implement them import them from here."""

#: estimate's methods (spectra.jacobian.methods); the dense ones build D x D Jacobians
METHODS = ("auto", "jvp", "vjp", "fd-forward", "fd-central", "topk")
DENSE_METHODS = METHODS[1:5]
#: methods whose forward-mode products can run compiled (--compile)
COMPILABLE = ("auto", "jvp", "topk")
#: what a model predicts, and the targets whose Jacobian is taken (spectra.models.parameterization)
PARAMETERIZATIONS = ("eps", "x0", "v", "score")
TARGETS = ("score", "denoiser", "eps")
#: a target `feature:NAME` is the activation of the network's submodule NAME (--feature NAME)
FEATURE_PREFIX = "feature:"
#: seconds the ranks of a torchrun sweep wait for each other to join (spectra.distributed)
DEFAULT_RENDEZVOUS_TIMEOUT = 300.0
#: the smallest gap, in normalized units, that counts as visible (spectra.studies.phases)
DEFAULT_RESOLUTION = 0.1
