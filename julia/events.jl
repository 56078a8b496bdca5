# Events through Python (forward only). The event functions and jumps are torch code, so one
# VectorContinuousCallback watches every component and calls back (hybrid_node/julia/events.py):
#
#   condition(u, t)                    -> length-`len` array of event values
#   affect(t, u, idx, crossing)        -> 0 ignore (a crossing against the event's direction),
#                                         1 record, 2 jump to `jumped()`, 3 terminate
#   jumped()                           -> length-N array, the state after the jump
#
# `idx` goes to Python 0-based, one component per call, with `crossing` the direction DiffEqBase
# found (+1 upwards, -1 downwards: minus the sign before the crossing, which after an event is the
# sign at a point nudged past it). Python filters the event's direction with it.
#
# How affect! is called depends on DiffEqBase (both are admitted by our compat: OrdinaryDiffEq
# sub-libraries 1.x use DiffEqBase 6 with SciMLBase 2, 2.x use DiffEqBase 7 with SciMLBase 3):
# - DiffEqBase 6 (DiffEqBase.jl src/callbacks.jl, apply_callback!): `affect!(integrator, idx)`
#   for an upcrossing (prev_sign < 0) and `affect_neg!(integrator, idx)` for a downcrossing, with
#   the Int index of the earliest root; SciMLBase 2's affect_neg! defaults to affect!, so it is
#   passed explicitly to tell the two apart;
# - DiffEqBase 7 (OrdinaryDiffEq.jl lib/DiffEqBase/src/callbacks.jl, apply_callback!):
#   `affect!(integrator, simultaneous_events)`, a view of a Vector{Int8} with one entry per
#   component: 0 no event, +1 an upcrossing, -1 a downcrossing, nonzero for every component whose
#   root is at the event time. SciMLBase 3's VectorContinuousCallback has no affect_neg!.
# `act!` has a method for each.

const EVENT_IGNORE = 0
const EVENT_RECORD = 1
const EVENT_JUMP = 2
const EVENT_TERMINATE = 3

"""
    mark_discontinuity!(integrator, changed::Bool)

Tell the integrator whether a callback changed the state (so its derivative must be re-evaluated).
SciMLBase 3 renamed `u_modified!` to `derivative_discontinuity!` and keeps `u_modified!` as a
deprecated alias (src/integrator_interface.jl); SciMLBase 2 has only `u_modified!`.
"""
function mark_discontinuity!(integrator, changed::Bool)
    if isdefined(SciMLBase, :derivative_discontinuity!)
        SciMLBase.derivative_discontinuity!(integrator, changed)
    else
        SciMLBase.u_modified!(integrator, changed)
    end
    return nothing
end

"""
    event_callback(condition, affect, jumped, len, n_state; interp_points) -> VectorContinuousCallback

The callback for `len` watched components whose values and crossings Python handles (see the
comment above). `interp_points` is DiffEqBase's: `interp_points - 2` sign checks inside each step
(Python's `Event.samples + 2`), 0 for the step's end only. Root finding is SciMLBase's default, `LeftRootFind`: `affect!` sees the left
limit at the root. Nothing is saved at the events (`save_positions = (false, false)`): the states
are saved at the output times only, and Python records each event's state itself. `affect!`
(`act!`) takes both DiffEqBase 6's `Int` index (with `act_neg!` as SciMLBase 2's `affect_neg!`)
and DiffEqBase 7's vector of crossings, and hands Python the direction of each (see the comment
above).
"""
function event_callback(condition::Py, affect::Py, jumped::Py, len::Integer, n_state::Integer;
                        interp_points::Integer = 10)
    # DiffEqBase checks the signs at range(tprev, stop = t, length = interp_points)[2:end]
    # (check_event_occurrence, src/callbacks.jl): interp_points - 2 points inside each step, and a
    # range of length 1 throws in the middle of the solve. Python sends samples + 2, or 0.
    interp_points == 1 &&
        throw(ArgumentError("interp_points = 1 is not allowed: DiffEqBase checks " *
                            "range(tprev, stop = t, length = interp_points)[2:end] (0 or >= 2)"))
    function cond!(out, u, t, integrator)
        values = PyArray(condition(flat_copy(u), Float64(t)))
        check_length(values, Int(len), "event function")
        copyto!(out, values)
        return nothing
    end
    # One crossing of component `idx` (1-based) in `direction` (+1 up, -1 down): Python says what
    # to do. Returns the action code; the caller sets the derivative-discontinuity flag once for
    # all the components it handles.
    function handle!(integrator, idx::Integer, direction::Integer)
        code = pyconvert(Int, affect(Float64(integrator.t), flat_copy(integrator.u), Int(idx) - 1,
                                     Int(direction)))
        if code == EVENT_JUMP
            new = collect(Float64, PyArray(jumped()))
            check_length(new, Int(n_state), "jump (on_event)")
            set_u!(integrator, reshape(new, size(integrator.u)))
        elseif code == EVENT_TERMINATE
            terminate!(integrator)
        end
        return code
    end
    # DiffEqBase 6: the index of the earliest root, affect! for an upcrossing, affect_neg! for a
    # downcrossing.
    function act_one!(integrator, idx::Integer, direction::Integer)
        code = handle!(integrator, idx, direction)
        # Only a jump changes the state; otherwise keep the step's derivative (no re-evaluation).
        code == EVENT_TERMINATE || mark_discontinuity!(integrator, code == EVENT_JUMP)
        return nothing
    end
    act!(integrator, idx::Integer) = act_one!(integrator, idx, 1)
    act_neg!(integrator, idx::Integer) = act_one!(integrator, idx, -1)
    # DiffEqBase 7: every component with a root at the event time, in index order (as Python
    # handles simultaneous crossings), with its direction; nothing after a terminating one.
    function act!(integrator, events::AbstractVector)
        any_jump = false
        for (idx, direction) in enumerate(events)
            iszero(direction) && continue
            code = handle!(integrator, idx, direction)
            code == EVENT_TERMINATE && return nothing
            any_jump |= code == EVENT_JUMP
        end
        mark_discontinuity!(integrator, any_jump)
        return nothing
    end
    # SciMLBase 2 (with DiffEqBase 6) has affect_neg!, defaulting to affect!; SciMLBase 3 has none
    # and refuses the keyword.
    negative = :affect_neg! in fieldnames(VectorContinuousCallback) ? (; affect_neg! = act_neg!) : (;)
    return VectorContinuousCallback(cond!, act!, Int(len); save_positions = (false, false),
                                    interp_points = Int(interp_points), negative...)
end

"""
    run_events(prob, alg, u0, θ, ts, opts, callback) -> ForwardResult

A plain forward solve (no Zygote, no sensitivity algorithm) with the event callback, saving at
`ts`. After a terminal event the saved states stop at the last output time reached; `back` is
`nothing` (no gradients through Python events).

The time reached is the integrator's, not `sol.t[end]`: after `terminate!` or a failure the solution
ends at the last output time passed, because the end point is saved only when it is `tspan[2]` or
in `saveat` (OrdinaryDiffEqCore `solution_endpoint_match_cur_integrator!`,
src/integrators/integrator_utils.jl, with `save_end` left to its default).
"""
function run_events(prob, alg, u0::Matrix{Float64}, θ::Vector{Float64}, ts::Vector{Float64}, opts,
                    callback)
    integrator = init(remake(prob; u0 = u0, p = θ), alg; saveat = ts, callback = callback,
                      opts...)
    sol = solve!(integrator)
    saved = [i for i in eachindex(sol.t) if sol.t[i] in ts]
    ys = isempty(saved) ? zeros(size(u0)..., 0) : cat([sol.u[i] for i in saved]...; dims = 3)
    stats = hasproperty(sol, :stats) ? sol.stats : nothing
    t_last = isempty(sol.t) ? ts[1] : Float64(sol.t[end])
    return ForwardResult(Array{Float64, 3}(ys), nothing, successful_retcode(sol),
                         string(sol.retcode), t_last, Float64(integrator.t),
                         all(isfinite, integrator.u), stat_count(stats, :nf),
                         stat_count(stats, :naccept), stat_count(stats, :nreject),
                         stat_count(stats, :njacs), size(u0), length(θ))
end

"""
    events_requested(event_condition) -> Bool

Whether a forward call carries an event callback (`event_condition` is a Python callable).
"""
events_requested(event_condition) = event_condition !== nothing
