"""crnn_ray: distributed ensemble trainer and batch scorer for stock-return prediction nets.

Plain core (data, zoo, metrics, train, score.predict) runs without Ray; Ray lives at the edges
(sweep: Tune + Train, score: Data, cluster/ and jobs/: the autoscaler and the job server).
"""

__version__ = "0.1.0"
