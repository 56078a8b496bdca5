# Events through Python (forward only). The event functions and jumps are torch code, so one
# VectorContinuousCallback watches every component and calls back (hybrid_node/julia/events.py):
#
#   condition(u, t)                    -> length-`len` array of event values
#   affect(t, u, idx, tprev, uprev)    -> 0 ignore (a crossing against the event's direction),
#                                         1 record, 2 jump to `jumped()`, 3 terminate
#   jumped()                           -> length-N array, the state after the jump
#
# `idx` goes to Python 0-based. The direction is decided in Python from the component's sign at the
# step's start: SciMLBase 3's VectorContinuousCallback has no affect_neg! and calls affect! at
# crossings in either direction (as SciMLBase 2 does with affect_neg! left at its default).

const EVENT_IGNORE = 0
const EVENT_RECORD = 1
const EVENT_JUMP = 2
const EVENT_TERMINATE = 3

"""
    event_callback(condition, affect, jumped, len, n_state; interp_points) -> VectorContinuousCallback

The callback for `len` watched components whose values and crossings Python handles (see the
comment above). Root finding is SciMLBase's default, `LeftRootFind`: `affect!` sees the left
limit at the root. Nothing is saved at the events (`save_positions = (false, false)`): the states
are saved at the output times only, and Python records each event's state itself.
"""
function event_callback(condition::Py, affect::Py, jumped::Py, len::Integer, n_state::Integer;
                        interp_points::Integer = 10)
    function cond!(out, u, t, integrator)
        values = PyArray(condition(flat_copy(u), Float64(t)))
        check_length(values, Int(len), "event function")
        copyto!(out, values)
        return nothing
    end
    function act!(integrator, idx)
        code = pyconvert(Int, affect(Float64(integrator.t), flat_copy(integrator.u), idx - 1,
                                     Float64(integrator.tprev), flat_copy(integrator.uprev)))
        if code == EVENT_JUMP
            new = collect(Float64, PyArray(jumped()))
            check_length(new, Int(n_state), "jump (on_event)")
            set_u!(integrator, reshape(new, size(integrator.u)))
            u_modified!(integrator, true)
        elseif code == EVENT_TERMINATE
            terminate!(integrator)
        else
            u_modified!(integrator, false)  # nothing changed: keep the step's derivative
        end
        return nothing
    end
    return VectorContinuousCallback(cond!, act!, Int(len); save_positions = (false, false),
                                    interp_points = Int(interp_points))
end

"""
    run_events(prob, alg, u0, θ, ts, opts, callback) -> ForwardResult

A plain forward solve (no Zygote, no sensitivity algorithm) with the event callback, saving at
`ts`. After a terminal event the saved states stop at the last output time reached; `back` is
`nothing` (no gradients through Python events).
"""
function run_events(prob, alg, u0::Matrix{Float64}, θ::Vector{Float64}, ts::Vector{Float64}, opts,
                    callback)
    sol = solve(prob, alg; u0 = u0, p = θ, saveat = ts, callback = callback, opts...)
    saved = [i for i in eachindex(sol.t) if sol.t[i] in ts]
    ys = isempty(saved) ? zeros(size(u0)..., 0) : cat([sol.u[i] for i in saved]...; dims = 3)
    stats = hasproperty(sol, :stats) ? sol.stats : nothing
    t_last = isempty(sol.t) ? ts[1] : Float64(sol.t[end])
    return ForwardResult(Array{Float64, 3}(ys), nothing, successful_retcode(sol),
                         string(sol.retcode), t_last, t_last, stat_count(stats, :nf),
                         stat_count(stats, :naccept), stat_count(stats, :nreject),
                         stat_count(stats, :njacs), size(u0), length(θ))
end

"""
    events_requested(event_condition) -> Bool

Whether a forward call carries an event callback (`event_condition` is a Python callable).
"""
events_requested(event_condition) = event_condition !== nothing
