"""`vharm serve`: a web page on the user's own machine to open a composite (or paste one), compare the input and the
result side by side or with a wipe, tune the strength, temporal smoothing and do-no-harm gate on a 480p preview, and
export the whole video through the same `Harmonizer` path as `vharm harmonize`.

`app.create_app` builds the FastAPI app around one loaded model; `uploads` streams files to a temporary directory;
`clips` reads a clip into its preview copy, previews frames and exports; `jobs` runs the long jobs one at a time.
FastAPI, uvicorn and python-multipart are the `serve` extra: nothing here is imported by the rest of vharm.
"""
