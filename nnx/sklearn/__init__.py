"""scikit-learn estimators on nnx: :class:`MLPClassifier` and :class:`MLPRegressor`.

They speak scikit-learn's ``MLPClassifier``/``MLPRegressor`` parameters with their meaning and
set the same fitted attributes, and they train an :class:`nnx.Sequential` (kept as
``model_``, by composition) on any nnx backend. ``docs/sklearn.md`` says where they differ
from ``Sequential``.

Where the arrays live ("everything follows X")
----------------------------------------------
With ``sklearn.set_config(array_api_dispatch=True)``, or whenever X is a non-NumPy array and
``backend`` is None, the model trains on X's library and device (found in nnx's registry),
in X's float dtype; y and ``sample_weight`` are moved there; ``predict``/``predict_proba``
and ``coefs_``/``intercepts_`` are arrays of X's namespace and device. ``classes_`` stays a
NumPy array, and ``predict`` of a classifier whose classes are not numbers returns NumPy.
With dispatch, predicting on another namespace or device than the fit's raises the
ValueError of scikit-learn's ``check_same_namespace``. Without dispatch and with NumPy X,
everything is NumPy (the model may still compute on ``backend=``).

How scikit-learn's objective maps onto nnx's
---------------------------------------------
scikit-learn minimises, per minibatch with weights ``w`` (all 1 without ``sample_weight``)
summing to ``W_b`` (``n_b`` without weights), ``sum_i w_i l_i / W_b + alpha / (2 W_b) *
sum ||W||^2``; nnx minimises the weighted mean data loss plus ``(l2 / 2) * sum ||W||^2``. So:

- classifiers (log-loss, the same weighted mean in both): ``l2 = alpha / W_b``; the
  objective, its gradient and ``loss_`` are scikit-learn's exactly.
- regressors: scikit-learn's gradient is that of ``sum_i w_i ||pred_i - y_i||^2 / (2 W_b) +
  alpha / (2 W_b) ||W||^2``, which is ``k / 2`` times nnx's ``mse + (l2 / 2) ||W||^2``
  (``mse`` weighted over rows and averaged over the ``k`` outputs) with ``l2 = 2 alpha / (k
  W_b)``. The step is made scikit-learn's by running SGD with ``lr = learning_rate_init * k /
  2`` and Adam with ``eps = epsilon * 2 / k`` (Adam is otherwise invariant to the factor).
  ``loss_`` is nnx's objective / 2: scikit-learn's ``squared_error / 2 + alpha/(2 W_b)
  ||W||^2`` exactly for one output; for ``k > 1`` outputs its L2 part is ``1/k`` of
  scikit-learn's.

nnx keeps one ``l2`` for a whole fit, so ``W_b`` is taken as ``batch_size`` times the mean
weight of the training rows: exact for every batch with ``batch_size >= n_samples`` (full
batch, the default for fewer than 200 samples), and for minibatches without weights except
the last, smaller one (``n % batch_size`` rows, penalised with ``alpha / batch_size``
instead of ``alpha / n_last``); with weights, each minibatch's L2 term is divided by the
expected weight of a batch rather than its own. ``loss_`` is the mean of the batches'
objectives weighted by their weights' sums (scikit-learn 1.9 weights them by their rows).

Other differences from scikit-learn, all deliberate:

- ``solver='lbfgs'`` is refused (nnx has no L-BFGS; ``max_fun``, its budget, is accepted
  and unused), and so is the regressor's ``loss='poisson'`` (squared error only).
  Negative ``sample_weight`` is refused.
- Adam: nnx adds ``epsilon`` to the bias-corrected ``sqrt(v_hat)`` (Kingma & Ba's
  algorithm 1); scikit-learn adds it to the uncorrected ``sqrt(v)``. The same for ``eps``
  small next to the gradients.
- The initial weights are scikit-learn's Glorot-uniform draws (from ``random_state``); the
  minibatch order comes from nnx's generator, seeded from ``random_state``, so the run is
  reproducible but not scikit-learn's bit for bit.
- Binary problems use one sigmoid unit (``out_activation_ = 'logistic'``) as scikit-learn
  does; multilabel targets are not supported.
- ``class_weight`` (the classifier's; scikit-learn's MLP has none) multiplies
  ``sample_weight`` by :func:`sklearn.utils.class_weight.compute_sample_weight` of y;
  ``'balanced'`` is refused by ``partial_fit``, as by scikit-learn's ``SGDClassifier``.
"""

from nnx.sklearn._classifier import MLPClassifier
from nnx.sklearn._regressor import MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
