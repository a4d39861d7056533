"""A custom NumPy training loop with fastadam.Adam.

The seed's third example writes Adam by hand in NumPy: keep ``m`` and ``v`` per
parameter, update them, correct their bias, step.  Here fastadam does that in one
fused, in-place pass over all the parameters at once, and the hand-written
version runs beside it as a check: both give the same weights.

Model: Dense(100 -> 64, relu) -> Dense(64 -> 1, sigmoid), binary cross-entropy,
batch 32, float32, on synthetic data (no download).

    python examples/numpy_loop.py
"""

import numpy as np

import fastadam

rng = np.random.default_rng(0)

# --- data: 100 features, labels from a hidden rule --------------------------------------
X = rng.standard_normal((2048, 100)).astype(np.float32)
teacher = rng.standard_normal((100, 4))
y = (np.tanh(X @ teacher / 10.0).sum(axis=1, keepdims=True) > 0).astype(np.float32)

# --- the model's parameters: a dict of name -> ndarray ----------------------------------
params = {
    "W1": (rng.standard_normal((100, 64)) * np.sqrt(2 / 100)).astype(np.float32),
    "b1": np.zeros(64, np.float32),
    "W2": (rng.standard_normal((64, 1)) * np.sqrt(1 / 64)).astype(np.float32),
    "b2": np.zeros(1, np.float32),
}
start = {k: v.copy() for k, v in params.items()}


def loss_and_grads(p, xb, yb, grads):
    """Forward and backward by hand; the gradients are written into ``grads``."""
    z1 = xb @ p["W1"] + p["b1"]
    a1 = np.maximum(z1, np.float32(0))
    z2 = a1 @ p["W2"] + p["b2"]
    prob = 1 / (1 + np.exp(-z2))
    eps = np.float32(1e-7)
    loss = -np.mean(yb * np.log(prob + eps) + (1 - yb) * np.log(1 - prob + eps))
    dz2 = (prob - yb) / np.float32(len(xb))
    grads["W2"][...] = a1.T @ dz2
    grads["b2"][...] = dz2.sum(axis=0)
    dz1 = (dz2 @ p["W2"].T) * (z1 > 0)
    grads["W1"][...] = xb.T @ dz1
    grads["b1"][...] = dz1.sum(axis=0)
    return float(loss)


# --- fastadam: the optimizer copies the arrays into one flat buffer and puts views of it
# back into `params`; gradients go into opt.grads[name][...]; step() is one kernel call.
opt = fastadam.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


# --- the seed's hand-written Adam, for comparison ----------------------------------------
class HandAdam:
    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, beta1, beta2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads):
        self.t += 1
        for k, p in self.params.items():
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            m_hat = self.m[k] / (1 - self.b1 ** self.t)
            v_hat = self.v[k] / (1 - self.b2 ** self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


hand_params = {k: v.copy() for k, v in start.items()}
hand = HandAdam(hand_params)
hand_grads = {k: np.zeros_like(v) for k, v in hand_params.items()}

batch, epochs = 32, 5
order = np.random.default_rng(1)
initial = loss_and_grads(params, X, y, {k: np.empty_like(v) for k, v in params.items()})
print(f"initial loss: {initial:.4f}")
for epoch in range(epochs):
    perm = order.permutation(len(X))
    total = 0.0
    for s in range(0, len(X), batch):
        idx = perm[s:s + batch]
        total += loss_and_grads(params, X[idx], y[idx], opt.grads) * len(idx)
        opt.step()                                   # fused, in place, all parameters
        loss_and_grads(hand_params, X[idx], y[idx], hand_grads)
        hand.step(hand_grads)
    print(f"epoch {epoch + 1}: mean batch loss {total / len(X):.4f}")

final = loss_and_grads(params, X, y, {k: np.empty_like(v) for k, v in params.items()})
diff = max(float(np.max(np.abs(params[k] - hand_params[k]))) for k in params)
print(f"max |fastadam - hand-written Adam| over all weights: {diff:.2e}")
state = opt.state[0]["float32"]                      # step, exp_avg, exp_avg_sq (flat)
nbytes = sum(a.nbytes for a in state.values() if isinstance(a, np.ndarray))
print(f"Adam's state: {nbytes / opt.flat[0].size:g} bytes per parameter (m and v)")
print(f"final loss: {final:.4f}")
