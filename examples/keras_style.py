"""Keras-style use of fastadam: the seed's Keras optimizer line, on NumPy arrays.

The seed builds its Keras optimizer as::

    from keras.optimizers import Adam
    optimizer = Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, decay=0.0)

``fastadam.keras.Adam`` takes exactly these arguments and follows Keras' math
(epsilon-hat Adam, the legacy ``decay`` lr / (1 + decay * iterations)); its
``apply_gradients(zip(grads, variables))`` updates NumPy arrays in place.  No
Keras or TensorFlow is needed.  Model: Dense(100 -> 64, relu) -> Dense(64 -> 1,
sigmoid), binary cross-entropy, batch 32, float32.

    python examples/keras_style.py
"""

import numpy as np

from fastadam.keras import Adam

rng = np.random.default_rng(0)

# --- data: 100 features, labels from a hidden rule --------------------------------------
X = rng.standard_normal((2048, 100)).astype(np.float32)
teacher = rng.standard_normal((100, 4))
y = (np.tanh(X @ teacher / 10.0).sum(axis=1, keepdims=True) > 0).astype(np.float32)

# --- Dense(100 -> 64, relu) -> Dense(64 -> 1, sigmoid): kernels and biases -------------
def glorot(fan_in, fan_out):
    limit = np.sqrt(6 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


kernel1, bias1 = glorot(100, 64), np.zeros(64, np.float32)
kernel2, bias2 = glorot(64, 1), np.zeros(1, np.float32)
variables = [kernel1, bias1, kernel2, bias2]


def loss_and_grads(xb, yb):
    """Forward and backward by hand; returns the loss and one gradient per variable."""
    z1 = xb @ kernel1 + bias1
    a1 = np.maximum(z1, np.float32(0))
    z2 = a1 @ kernel2 + bias2
    prob = 1 / (1 + np.exp(-z2))
    eps = np.float32(1e-7)
    loss = -np.mean(yb * np.log(prob + eps) + (1 - yb) * np.log(1 - prob + eps))
    dz2 = (prob - yb) / np.float32(len(xb))
    dz1 = (dz2 @ kernel2.T) * (z1 > 0)
    return float(loss), [xb.T @ dz1, dz1.sum(axis=0), a1.T @ dz2, dz2.sum(axis=0)]


optimizer = Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, decay=0.0)

print(f"initial loss: {loss_and_grads(X, y)[0]:.4f}")
batch, epochs = 32, 5
order = np.random.default_rng(1)
for epoch in range(epochs):
    perm = order.permutation(len(X))
    total = 0.0
    for s in range(0, len(X), batch):
        idx = perm[s:s + batch]
        loss, grads = loss_and_grads(X[idx], y[idx])
        optimizer.apply_gradients(zip(grads, variables))   # updates the arrays in place
        total += loss * len(idx)
    print(f"epoch {epoch + 1}: mean batch loss {total / len(X):.4f}")

print(f"final loss: {loss_and_grads(X, y)[0]:.4f}")
