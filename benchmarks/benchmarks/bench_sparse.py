"""Row-sparse (embedding) steps: fastadam.torch against torch.optim's sparse optimizers.

float32 tables with Zipf-distributed lookups, the gradient an uncoalesced COO tensor
with one row per lookup (what ``nn.Embedding(sparse=True)`` gives), four different
ones cycled (see :mod:`fastadam.bench.sparse`, which builds the contenders):

* ``1M x 64``, 8,192 lookups per step (~1,800 distinct rows);
* ``100K x 128``, 32,768 lookups per step.

``SparseStep.time_step``: one ``step()`` of each contender -- ``torch SparseAdam``,
``torch Adagrad (sparse)``, ``torch SGD (sparse)``, ``torch fused Adam (dense)``
(the whole table, dense gradient), the ``row-traffic loop`` (a compiled loop over
pre-deduplicated rows that reads every lookup's index entry and gradient row and moves
a row-sparse Adam step's bytes: the limit, without sorting or deduplicating), and
fastadam's
``SparseAdam``, ``Adagrad (sparse)``, ``SGD (sparse)``, ``RowWiseAdagrad`` and
``Adam lazy``.  ``SparseStep.peakmem_step``: the peak memory of one optimizer and a
step (the flat gradient of a sparse table is never touched: no memory).  Skipped
where torch is not installed.
"""

TABLES = {"1M x 64": (1 << 20, 64, 8192), "100K x 128": (100_000, 128, 32768)}
CONTENDERS = ["fastadam SparseAdam", "torch SparseAdam", "fastadam Adagrad (sparse)",
              "torch Adagrad (sparse)", "fastadam SGD (sparse)", "torch SGD (sparse)",
              "fastadam RowWiseAdagrad", "fastadam Adam lazy", "row-traffic loop",
              "torch fused Adam (dense)"]


def _one(table, contender):
    from fastadam.bench import sparse

    rows, dim, n = TABLES[table]
    cont = sparse.contenders(rows, dim, n, "zipf", only=(contender,))
    if contender not in cont:
        raise NotImplementedError(f"{contender} is not available here")
    return cont[contender]


class SparseStep:
    params = [list(TABLES), CONTENDERS]
    param_names = ["table", "contender"]
    timeout = 600
    number = 10
    repeat = (3, 7, 60.0)

    def setup(self, table, contender):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("torch is not installed")
        import warnings
        warnings.filterwarnings("ignore", "Sparse invariant checks")
        self.step = _one(table, contender)
        for _ in range(3):              # compile (or load) the kernels, fault in the state
            self.step()

    def time_step(self, table, contender):
        self.step()

    def peakmem_step(self, table, contender):
        self.step()
