"""The tasks: one shared denoising loop (`loop.run_sampling`) and thin builders that differ only in their
start latents and extra UNet inputs. Each task is
`task(components, request, on_step=None, mode=NORMAL) -> PipelineOutput`; `mode` (run_mode.RunMode) is the
fallback ladder's choice of precision and memory switches for this attempt.

The package imports none of its modules: names are imported from the module that defines them
(`from sd2_app.pipelines.txt2img import txt2img`), so that its torch-free modules (`metadata`, `watermark`,
`prompt_chunks`) serve a front end that holds no models without loading torch (sd2_app/serve/backend.py).
"""
