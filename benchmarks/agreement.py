"""Worst disagreement with PyTorch over every activation x loss x optimizer, both dtypes.

    python benchmarks/agreement.py

For each case: a random 20-37-37-37-5 MLP, 4 train steps on one batch of 33; the relative error
max|ours - torch| / max|torch| of the loss, every gradient and every parameter after each step.
"""
import numpy as np
import torch

import layerprop as lp

ACTS = {"ReLU": (lp.ReLU, torch.nn.ReLU), "LeakyReLU": (lp.LeakyReLU, torch.nn.LeakyReLU),
        "Tanh": (lp.Tanh, torch.nn.Tanh), "Sigmoid": (lp.Sigmoid, torch.nn.Sigmoid),
        "GELU": (lp.GELU, torch.nn.GELU), "Identity": (lp.Identity, torch.nn.Identity)}
OPTS = {
    "SGD momentum+dampening+wd": (lambda: lp.SGD(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
                                  lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "SGD nesterov": (lambda: lp.SGD(lr=0.1, momentum=0.9, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    "Adam+wd": (lambda: lp.Adam(lr=1e-2, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1)),
    "AdamW": (lambda: lp.AdamW(lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2)),
}
LOSSES = {"cross_entropy": torch.nn.functional.cross_entropy, "mse": torch.nn.functional.mse_loss,
          "bce_with_logits": torch.nn.functional.binary_cross_entropy_with_logits}


def worst_case(dtype, act, loss, opt, seed=0):
    rng = np.random.default_rng(seed)
    dims = [20, 37, 37, 37, 5]
    ours, theirs = [], []
    for i in range(len(dims) - 1):
        ours.append(lp.Linear(dims[i], dims[i + 1]))
        theirs.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            ours.append(ACTS[act][0]())
            theirs.append(ACTS[act][1]())
    m = lp.Sequential(*ours, dtype=dtype, seed=seed)
    t = torch.nn.Sequential(*theirs).to(getattr(torch, dtype))
    with torch.no_grad():
        for name, p in t.named_parameters():
            p.copy_(torch.from_numpy(m.parameters()[name]))
    m.compile(loss=loss, optimizer=OPTS[opt][0]())
    topt = OPTS[opt][1](t.parameters())
    X = rng.standard_normal((33, 20)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, 5, 33)
    elif loss == "mse":
        y = rng.standard_normal((33, 5)).astype(dtype)
    else:
        y = rng.uniform(0, 1, (33, 5)).astype(dtype)
    worst = 0.0
    for _ in range(4):
        ours_loss = m.train_step(X, y)
        topt.zero_grad()
        tl = LOSSES[loss](t(torch.from_numpy(X)), torch.from_numpy(y))
        tl.backward()
        worst = max(worst, abs(ours_loss - tl.item()) / abs(tl.item()))
        for name, p in t.named_parameters():
            g = p.grad.numpy()
            worst = max(worst, np.abs(m.gradients()[name] - g).max() / max(np.abs(g).max(), 1e-30))
        topt.step()
        for name, p in t.named_parameters():
            w = p.detach().numpy()
            worst = max(worst, np.abs(m.parameters()[name] - w).max() / np.abs(w).max())
    return worst


def main():
    torch.set_num_threads(1)
    for dtype in ("float64", "float32"):
        results = [(worst_case(dtype, a, lo, o), a, lo, o) for a in ACTS for lo in LOSSES for o in OPTS]
        err, a, lo, o = max(results)
        print(f"{dtype}: worst relative disagreement {err:.2e} over {len(results)} cases "
              f"(activation x loss x optimizer; worst: {a}, {lo}, {o})")


if __name__ == "__main__":
    main()
