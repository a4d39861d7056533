"""A recommender trained with one fastadam optimizer: sparse embedding tables and a dense tower.

The model scores (user, item) pairs: a user embedding, the mean of the item's
tag embeddings (an ``nn.EmbeddingBag``) added to the item's own embedding, and a
small MLP over the product.  The tables are ``sparse=True``: their gradients hold
only the rows a batch looked up.  With torch.optim this takes two optimizers
(``SparseAdam`` for the tables, ``Adam`` for the tower); here one does both::

    optimizer = fastadam.torch.Adam(model.parameters(), lr=1e-2, sparse_grads="lazy")

Each step updates the dense tower as Adam does and only the looked-up rows of the
tables (their moments included), with one fused row-sparse kernel call per table
that sums duplicate lookups first.  ``fastadam.torch.SparseAdam``,
``fastadam.torch.Adagrad`` and ``fastadam.torch.RowWiseAdagrad`` take the same sparse
gradients; see docs/embeddings.md.

    pip install torch==2.13.0      # the pinned CPU build
    python examples/embeddings.py
"""

import torch
import torch.nn as nn

import fastadam.torch

torch.manual_seed(0)
USERS, ITEMS, TAGS, TAGS_PER_ITEM, DIM = 5000, 20000, 500, 4, 16

# --- data: clicks from hidden user / item factors, Zipf-popular items ------------------
true_u = torch.randn(USERS, 8)
true_i = torch.randn(ITEMS, 8)
item_tags = torch.randint(0, TAGS, (ITEMS, TAGS_PER_ITEM))


def sample(n, gen):
    users = torch.randint(0, USERS, (n,), generator=gen)
    ranks = torch.distributions.Pareto(1.0, 0.5).sample((n,)).long() - 1   # popular items
    items = (ranks * 7919) % ITEMS
    clicked = ((true_u[users] * true_i[items]).sum(1) > 0).float()
    return users, items, clicked


class Recommender(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(USERS, DIM, sparse=True)
        self.item = nn.Embedding(ITEMS, DIM, sparse=True)
        self.tags = nn.EmbeddingBag(TAGS, DIM, mode="mean", sparse=True)
        self.tower = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 1))
        for t in (self.user, self.item, self.tags):
            nn.init.normal_(t.weight, std=0.1)

    def forward(self, users, items):
        item_vec = self.item(items) + self.tags(item_tags[items])
        return self.tower(self.user(users) * item_vec).squeeze(1)


model = Recommender()
optimizer = fastadam.torch.Adam(model.parameters(), lr=1e-2, sparse_grads="lazy")
loss_fn = nn.BCEWithLogitsLoss()

gen = torch.Generator().manual_seed(1)
test = sample(8192, gen)
with torch.no_grad():
    print(f"initial loss: {loss_fn(model(*test[:2]), test[2]).item():.4f}")

touched = 0
for step in range(300):
    users, items, clicked = sample(256, gen)
    optimizer.zero_grad()
    loss_fn(model(users, items), clicked).backward()
    touched += model.item.weight.grad.coalesce()._nnz() if step % 100 == 0 else 0
    optimizer.step()

with torch.no_grad():
    logits = model(*test[:2])
    print(f"final loss: {loss_fn(logits, test[2]).item():.4f}")
    print(f"test accuracy: {((logits > 0).float() == test[2]).float().mean().item():.3f}")
print(f"item rows updated per step (of {ITEMS}): ~{touched // 3}")
print(f"one optimizer, {len(optimizer.param_groups[0]['params'])} parameters in one flat "
      f"buffer of {optimizer._buckets[0].data.numel():,} floats")
