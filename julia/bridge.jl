# Entry points called from Python: solve forward, keep the Zygote pullback, and run it backwards.

"""
Result of a forward solve. `ys` is `(D, B, T)`; `back` is the Zygote pullback of the solve;
the statistics come from the solution's `DEStats`.
"""
struct ForwardResult
    ys::Array{Float64, 3}
    back::Any
    success::Bool
    retcode::String
    t_final::Float64
    nf::Int
    naccept::Int
    nreject::Int
    njacs::Int
    state_size::Tuple{Int, Int}
    n_params::Int
end

stat(stats, name::Symbol) = (stats === nothing || !hasproperty(stats, name)) ? 0 :
                            Int(getproperty(stats, name))

function solver_options(ts; abstol, reltol, maxiters, dt, fixed_step)
    opts = (abstol = Float64(abstol), reltol = Float64(reltol))
    maxiters === nothing || (opts = merge(opts, (maxiters = Int(maxiters),)))
    dt === nothing || (opts = merge(opts, (dt = Float64(dt),)))
    # Fixed-grid methods step on dt and also stop at every output time, as torch's do.
    fixed_step && (opts = merge(opts, (adaptive = false, tstops = ts)))
    return opts
end

function run_forward(prob, alg, sensealg, u0::Matrix{Float64}, θ::Vector{Float64},
                     ts::Vector{Float64}, opts)
    # Both alg and sensealg are always explicit: the automatic choices push Dual numbers or
    # Zygote into f, and the default algorithm broke with matrix states (SciMLSensitivity #1165).
    function solve_array(u0_, θ_)
        sol = solve(prob, alg; u0 = u0_, p = θ_, saveat = ts, sensealg = sensealg, opts...)
        return Array(sol), sol
    end
    (ys, sol), back = Zygote.pullback(solve_array, u0, θ)
    stats = hasproperty(sol, :stats) ? sol.stats : nothing
    t_final = isempty(sol.t) ? ts[1] : Float64(sol.t[end])
    return ForwardResult(Array{Float64, 3}(ys), back, successful_retcode(sol),
                         string(sol.retcode), t_final, stat(stats, :nf), stat(stats, :naccept),
                         stat(stats, :nreject), stat(stats, :njacs), size(u0), length(θ))
end

function prepare(u0, θ, ts)
    u0m = Matrix{Float64}(u0)
    θv = collect(Float64, θ)
    tsv = collect(Float64, ts)
    length(tsv) >= 2 || throw(ArgumentError("need at least two output times"))
    return u0m, θv, tsv
end

"""
    forward_mlp(n_in, n_out, has_bias, activations, time_input, θ, u0, ts; algorithm,
                sensitivity, checkpointing=false, abstol, reltol, quad_abstol=1e-6,
                quad_reltol=1e-3, maxiters=nothing, dt=nothing, fixed_step=false) -> ForwardResult

Solve the MLP Neural ODE (Path A) from `u0` (D, B) over the times `ts`, saving at `ts`.
`activations` is a comma-separated list of names, one per layer.
"""
function forward_mlp(n_in, n_out, has_bias, activations::AbstractString, time_input::Bool, θ,
                     u0, ts; algorithm::AbstractString, sensitivity::AbstractString,
                     checkpointing::Bool = false, abstol::Real, reltol::Real,
                     quad_abstol::Real = 1e-6, quad_reltol::Real = 1e-3, maxiters = nothing,
                     dt = nothing, fixed_step::Bool = false)
    mlp = MLP(collect(Int, n_in), collect(Int, n_out), collect(Bool, has_bias),
              split(activations, ","), time_input)
    u0m, θv, tsv = prepare(u0, θ, ts)
    length(θv) == mlp.n_params ||
        throw(DimensionMismatch("θ has $(length(θv)) entries, the MLP needs $(mlp.n_params)"))
    prob = ODEProblem{false}((u, p, t) -> mlp(u, p, t), u0m, (tsv[1], tsv[end]), θv)
    alg = make_algorithm(algorithm)
    sensealg = make_sensealg(sensitivity, algorithm; checkpointing, quad_abstol, quad_reltol)
    opts = solver_options(tsv; abstol, reltol, maxiters, dt, fixed_step)
    return run_forward(prob, alg, sensealg, u0m, θv, tsv, opts)
end

"""
    forward_callback(f, vjp, jac, θ, u0, ts; algorithm, sensitivity, ...) -> ForwardResult

Solve with a torch module as the vector field (Path B); see `callback_function`. `θ` is the flat
parameter vector (its values are only used for sizes: torch holds the parameters).
"""
function forward_callback(f::Py, vjp::Py, jac, θ, u0, ts; algorithm::AbstractString,
                          sensitivity::AbstractString, checkpointing::Bool = false,
                          abstol::Real, reltol::Real, quad_abstol::Real = 1e-6,
                          quad_reltol::Real = 1e-3, maxiters = nothing, dt = nothing,
                          fixed_step::Bool = false)
    u0m, θv, tsv = prepare(u0, θ, ts)
    stiff = algorithm in STIFF_ALGORITHMS
    cb = TorchCallbacks(f, vjp, jac, length(u0m), length(θv))
    odef = callback_function(cb; stiff)
    prob = ODEProblem(odef, u0m, (tsv[1], tsv[end]), θv)
    alg = make_algorithm(algorithm; finite_diff = true)
    sensealg = make_sensealg(sensitivity, algorithm; checkpointing, quad_abstol, quad_reltol)
    opts = solver_options(tsv; abstol, reltol, maxiters, dt, fixed_step)
    return run_forward(prob, alg, sensealg, u0m, θv, tsv, opts)
end

"""
    backward(result, ybar) -> (u0bar, θbar)

Gradients of ⟨ybar, ys⟩ with respect to the initial state `(D, B)` and the parameters, given the
cotangent `ybar` `(D, B, T)` of the saved states.
"""
function backward(result::ForwardResult, ybar)
    Ȳ = Array{Float64, 3}(ybar)
    size(Ȳ) == size(result.ys) ||
        throw(DimensionMismatch("cotangent has size $(size(Ȳ)), states have $(size(result.ys))"))
    ū0, θ̄ = result.back((Ȳ, nothing))
    ū0 = ū0 === nothing ? zeros(result.state_size) : Matrix{Float64}(reshape(ū0, result.state_size))
    θ̄ = θ̄ === nothing ? zeros(result.n_params) : collect(Float64, vec(θ̄))
    return ū0, θ̄
end
