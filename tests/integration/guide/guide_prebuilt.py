"""Guide: "Pre-built Model Runners" (run as a script)."""
import numpy as np
from guide_torch import train

import shmserve.compat.bentoml as bentoml

MODEL_INPUT = np.ones((2, 4), dtype=np.float32)

if __name__ == "__main__":
    trained_model = train()

    bentoml.pytorch.save_model(
        "demo_mnist",  # model name in the local model store
        trained_model,  # model instance being saved
        signatures={   # model signatures for runner inference
            "predict": {
                "batchable": True,
                "batch_dim": 0,
            }
        }
    )

    runner = bentoml.pytorch.get("demo_mnist:latest").to_runner()
    runner.init_local()
    print(runner.predict.run(MODEL_INPUT).tolist())
