"""The seed's Keras example, with fastadam's Adam inside Keras.

The seed teaches Adam through Keras: a ``Sequential`` model, then::

    model.compile(loss='binary_crossentropy', optimizer=Adam(learning_rate=0.001),
                  metrics=['accuracy'])

and ``fit``.  Here ``Adam`` is ``fastadam.keras.Adam``: a Keras optimizer (Keras
accepts it wherever it accepts its own) whose update is fastadam's fused kernel,
run in place on the model's weights, with Keras' math.  It needs Keras 3 on its
torch backend (``KERAS_BACKEND=torch``, set below unless already set).

The script trains the seed's model (Dense(100 -> 64, relu) -> Dense(64 -> 1,
sigmoid), batch 32, float32) on synthetic data, then trains the same model from
the same initial weights with Keras' own Adam, compares the weights, and times
an epoch with each optimizer (interleaved).

    python examples/keras_seed.py
"""

import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.layers import Dense, Input  # noqa: E402
from keras.models import Sequential  # noqa: E402

from fastadam.keras import Adam  # noqa: E402

rng = np.random.default_rng(0)

# --- data: 100 features, labels from a hidden rule --------------------------------------
X = rng.standard_normal((2048, 100)).astype(np.float32)
teacher = rng.standard_normal((100, 4))
y = (np.tanh(X @ teacher / 10.0).sum(axis=1, keepdims=True) > 0).astype(np.float32)


def seed_model():
    keras.utils.set_random_seed(0)        # the same initial weights each time
    return Sequential([Input((100,)), Dense(64, activation="relu"),
                       Dense(1, activation="sigmoid")])


# --- the seed's model and compile line, with fastadam.keras.Adam ------------------------
model = seed_model()
model.compile(loss="binary_crossentropy", optimizer=Adam(learning_rate=0.001),
              metrics=["accuracy"])
print(f"initial loss: {model.evaluate(X, y, verbose=0)[0]:.4f}")
history = model.fit(X, y, batch_size=32, epochs=5, shuffle=False, verbose=0)
for epoch, (loss, acc) in enumerate(zip(history.history["loss"],
                                        history.history["accuracy"])):
    print(f"epoch {epoch + 1}: loss {loss:.4f}, accuracy {acc:.3f}")
print(f"final loss: {model.evaluate(X, y, verbose=0)[0]:.4f}")

# --- the same fit with Keras' own Adam: same weights to float32 rounding ----------------
theirs = seed_model()
theirs.compile(loss="binary_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=0.001),
               metrics=["accuracy"])
theirs.fit(X, y, batch_size=32, epochs=5, shuffle=False, verbose=0)
diff = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(model.weights,
                                                                        theirs.weights))
scale = max(float(np.max(np.abs(b.numpy()))) for b in theirs.weights)
print(f"max |fastadam - keras.optimizers.Adam| over all weights, relative: {diff / scale:.2e}")

# --- time per epoch, interleaved (the first epoch of each already ran) ------------------
times = {"keras.optimizers.Adam": [], "fastadam.keras.Adam": []}
for _ in range(3):
    for label, m in (("keras.optimizers.Adam", theirs), ("fastadam.keras.Adam", model)):
        t0 = time.perf_counter()
        m.fit(X, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        times[label].append(time.perf_counter() - t0)
for label, ts in times.items():
    print(f"{label}: {min(ts) * 1e3:.1f} ms per epoch (64 steps; best of 3)")
print("fastadam bench --keras times every optimizer, and an ~8M-parameter model")
