"""The seed's PyTorch training loop, with fastadam.torch.Adam as a drop-in.

The only change from a torch.optim loop is the optimizer line::

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)      # before
    optimizer = fastadam.torch.Adam(model.parameters(), lr=1e-3)   # after

fastadam.torch moves the model's parameters into one flat buffer (``p.data``
becomes a view of it) and binds ``p.grad`` to views of one flat gradient buffer,
so ``loss.backward()`` accumulates straight into it and ``optimizer.step()`` is one
fused kernel call for the whole model.  The same loop with torch.optim.Adam runs
beside it from the same weights, to show the two train alike.

    pip install torch==2.13.0      # the pinned CPU build
    python examples/pytorch_loop.py
"""

import copy

import torch
import torch.nn as nn

import fastadam.torch

torch.manual_seed(0)

# --- data: 100 features, labels from a hidden rule --------------------------------------
X = torch.randn(2048, 100)
teacher = torch.randn(100, 4)
y = (torch.tanh(X @ teacher / 10.0).sum(dim=1, keepdim=True) > 0).float()

# --- the seed's model ----------------------------------------------------------------------
model = nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid())
reference = copy.deepcopy(model)                      # same starting weights
criterion = nn.BCELoss()

optimizer = fastadam.torch.Adam(model.parameters(), lr=1e-3)
ref_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3, foreach=False)

with torch.no_grad():
    print(f"initial loss: {criterion(model(X), y).item():.4f}")

batch, epochs = 32, 5
gen = torch.Generator().manual_seed(1)
for epoch in range(epochs):
    perm = torch.randperm(len(X), generator=gen)
    total = 0.0
    for s in range(0, len(X), batch):
        idx = perm[s:s + batch]
        for net, opt in ((model, optimizer), (reference, ref_optimizer)):
            opt.zero_grad()
            loss = criterion(net(X[idx]), y[idx])
            loss.backward()
            opt.step()
            if net is model:
                total += loss.item() * len(idx)
    print(f"epoch {epoch + 1}: mean batch loss {total / len(X):.4f}")

with torch.no_grad():
    final = criterion(model(X), y).item()
    ref_final = criterion(reference(X), y).item()
    diff = max((a - b).abs().max().item()
               for a, b in zip(model.parameters(), reference.parameters()))
print(f"torch.optim.Adam final loss: {ref_final:.4f}; "
      f"max |fastadam - torch.optim| over all weights: {diff:.2e}")
print(f"final loss: {final:.4f}")
