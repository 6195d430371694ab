"""What `duet train` takes for recommendation datasets only (`RunConfig.options` of their runs)."""

from pydantic import Field

from duet.config import Strict


class TrainOptions(Strict):
    """Recommendation training options; other tasks' runs neither take nor record them."""

    # Extra negatives per training event, drawn afresh every epoch from the whole catalogue
    # (beside the dataset's own fixed negatives): with one fixed negative per positive (the
    # reference protocol) a model learns which item was the negative instead of what the user
    # likes (docs/results/recommendation.md).
    sampled_negatives: int = Field(4, ge=0, description="extra uniform negatives per train event, drawn afresh "
                                                        "every epoch from the whole catalogue")
