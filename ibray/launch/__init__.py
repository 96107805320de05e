"""The Ray wing: every module of ibray that imports Ray, and what they share.

    launcher       running a sweep on Ray Tune: checks, data, Ray, the Tuner, resume
    trainable      the Tune function trainable: one trial (a grid point, a block of seeds)
    live_view      the sweep's live line and the storage-fault stopper (Tune callbacks)
    tune_state     what the launcher reads of Tune's own records
    storage_probe  whether every node of a cluster shares the results root
    ray_leftovers  what a killed driver's local Ray left running (no Ray import; reads /proc)
    outcome        the names the modules above share (no Ray import)

Nothing outside this package imports Ray; `ibray sweep` reaches it through the launcher.
"""
