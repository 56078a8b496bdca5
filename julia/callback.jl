# Path B: any torch module as the vector field. Julia calls back into Python for f, for one
# vector-Jacobian product that yields both the state and the parameter part, and (stiff methods)
# for the Jacobian. Everything crosses the boundary as flat Float64 vectors: `vec` of a Julia
# (D, B) state has the memory order of a torch (B, D) tensor.
#
# The Python callables (built in hybrid_node/julia/translate.py) are
#   f(u, t)      -> length-N array                      (N = D * B)
#   vjp(λ, u, t) -> length-(N + P) array [λᵀ ∂f/∂u; λᵀ ∂f/∂θ]
#   jac(u, t)    -> length-N² array, ∂f/∂u in column-major order (or `nothing`)

mutable struct TorchCallbacks
    f::Py
    vjp::Py
    jac::Union{Py, Nothing}
    n_state::Int
    n_params::Int
    # The parameter half of the last vjp call, reused when vjp_p asks at the same point.
    cached_t::Float64
    cached_λ::Vector{Float64}
    cached_u::Vector{Float64}
    cached_vjp_p::Vector{Float64}
end

function TorchCallbacks(f::Py, vjp::Py, jac, n_state::Integer, n_params::Integer)
    return TorchCallbacks(f, vjp, jac, Int(n_state), Int(n_params), NaN, Float64[], Float64[],
                          Float64[])
end

# Copy at the boundary: solvers reuse their buffers, and views are not plain arrays for Python.
flat_copy(x) = collect(Float64, vec(x))

function check_length(out, n::Int, what::AbstractString)
    length(out) == n ||
        throw(DimensionMismatch("the Python $what returned $(length(out)) values, expected $n"))
    return out
end

function eval_f!(cb::TorchCallbacks, du, u, p, t)
    out = PyArray(cb.f(flat_copy(u), Float64(t)))
    check_length(out, cb.n_state, "vector field")
    copyto!(du, out)
    return nothing
end

function call_vjp!(cb::TorchCallbacks, λ, u, t)
    λv, uv, tv = flat_copy(λ), flat_copy(u), Float64(t)
    out = PyArray(cb.vjp(λv, uv, tv))
    check_length(out, cb.n_state + cb.n_params, "vector-Jacobian product")
    gu = collect(Float64, view(out, 1:cb.n_state))
    gp = collect(Float64, view(out, (cb.n_state + 1):(cb.n_state + cb.n_params)))
    cb.cached_t, cb.cached_λ, cb.cached_u, cb.cached_vjp_p = tv, λv, uv, gp
    return gu, gp
end

function eval_vjp!(cb::TorchCallbacks, dλ, λ, u, p, t)
    gu, _ = call_vjp!(cb, λ, u, t)
    copyto!(dλ, gu)
    return nothing
end

function eval_vjp_p!(cb::TorchCallbacks, out, λ, u, p, t)
    hit = Float64(t) == cb.cached_t && length(cb.cached_λ) == length(λ) &&
          vec(λ) == cb.cached_λ && vec(u) == cb.cached_u
    gp = hit ? cb.cached_vjp_p : call_vjp!(cb, λ, u, t)[2]
    copyto!(out, gp)
    return nothing
end

function eval_jac!(cb::TorchCallbacks, J, u, p, t)
    cb.jac === nothing && throw(ArgumentError("no Jacobian callback was given"))
    out = PyArray(cb.jac(flat_copy(u), Float64(t)))
    check_length(out, cb.n_state^2, "Jacobian")
    copyto!(J, out)
    return nothing
end

"""
    callback_function(cb; stiff) -> ODEFunction{true}

An in-place ODEFunction whose `vjp` and `vjp_p` fields (and `jac` for stiff methods) call torch,
so SciMLSensitivity never differentiates through Python. `FullSpecialize` keeps SciMLBase from
wrapping the function in a FunctionWrapper.
"""
function callback_function(cb::TorchCallbacks; stiff::Bool)
    f! = (du, u, p, t) -> eval_f!(cb, du, u, p, t)
    vjp! = (dλ, λ, u, p, t) -> eval_vjp!(cb, dλ, λ, u, p, t)
    vjp_p! = (out, λ, u, p, t) -> eval_vjp_p!(cb, out, λ, u, p, t)
    if stiff
        jac! = (J, u, p, t) -> eval_jac!(cb, J, u, p, t)
        n = cb.n_state
        return ODEFunction{true, FullSpecialize}(f!; vjp = vjp!, vjp_p = vjp_p!, jac = jac!,
                                                 jac_prototype = zeros(n, n))
    end
    return ODEFunction{true, FullSpecialize}(f!; vjp = vjp!, vjp_p = vjp_p!)
end
