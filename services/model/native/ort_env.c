/*
 * ort_env: creates ONNX Runtime's process environment with one global intra-op thread pool, before
 * onnxruntime-node does. The node binding creates its environment without global pools, so every
 * session would own a pool of its own; a decode step runs ~25 sessions one after another, and a
 * pool that does not spin must wake its threads at every parallel section of every run, while
 * pools that spin hold cores the next session needs. One shared pool can spin: only one run
 * uses it at a time.
 *
 * ORT's environment is a process singleton (OrtEnv::GetInstance returns the existing one), so the
 * binding's later CreateEnv gets this one, and sessions configured with
 * session.use_per_session_threads = 0 run on its pool.
 *
 * No ONNX Runtime headers: the OrtApi struct is a table of function pointers whose order is ABI
 * (append-only across releases); the indices below are those of onnxruntime_c_api.h.
 *
 * initEnv(libonnxruntimePath, intraOpThreads, allowSpinning) -> { threads, spinning } of the pool
 * (the first call's: later calls, from other threads of the process, get the same environment);
 * throws with the loader's or ORT's message.
 */
#include <node_api.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>

typedef void *OrtStatusPtr;
typedef struct {
  const void *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;

/* Positions in struct OrtApi (onnxruntime_c_api.h). */
enum {
  API_GET_ERROR_MESSAGE = 2,
  API_RELEASE_STATUS = 93,
  API_CREATE_ENV_WITH_GLOBAL_THREAD_POOLS = 119,
  API_CREATE_THREADING_OPTIONS = 121,
  API_RELEASE_THREADING_OPTIONS = 122,
  API_SET_GLOBAL_INTRA_OP_NUM_THREADS = 147,
  API_SET_GLOBAL_INTER_OP_NUM_THREADS = 148,
  API_SET_GLOBAL_SPIN_CONTROL = 149,
};
/* The oldest API version that has every entry above (ORT 1.16). */
#define API_VERSION 16
#define LOG_WARNING 2

/* Process-wide: the environment this module made (never released) and its pool. */
static void *env_created = NULL;
static int32_t pool_threads = 0;
static bool pool_spinning = false;

static napi_value pool(napi_env env) {
  napi_value out, t, s;
  napi_create_object(env, &out);
  napi_create_int32(env, pool_threads, &t);
  napi_get_boolean(env, pool_spinning, &s);
  napi_set_named_property(env, out, "threads", t);
  napi_set_named_property(env, out, "spinning", s);
  return out;
}

static napi_value fail(napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static napi_value init_env(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char lib[4096];
  size_t len = 0;
  int32_t threads = 0;
  bool spin = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
      napi_get_value_string_utf8(env, argv[0], lib, sizeof lib, &len) != napi_ok ||
      napi_get_value_int32(env, argv[1], &threads) != napi_ok || napi_get_value_bool(env, argv[2], &spin) != napi_ok || threads < 1) {
    return fail(env, "initEnv(libPath: string, intraOpThreads: integer >= 1, allowSpinning: boolean)");
  }
  if (env_created) return pool(env);

  void *h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
  if (!h) return fail(env, dlerror());
  const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(h, "OrtGetApiBase");
  if (!get_base) return fail(env, "OrtGetApiBase not found in the ONNX Runtime library");
  void *const *api = (void *const *)get_base()->GetApi(API_VERSION);
  if (!api) return fail(env, "this ONNX Runtime library is older than 1.16 (GetApi(16) returned null)");

  OrtStatusPtr (*create_tp)(void **) = (OrtStatusPtr (*)(void **))api[API_CREATE_THREADING_OPTIONS];
  OrtStatusPtr (*set_intra)(void *, int) = (OrtStatusPtr (*)(void *, int))api[API_SET_GLOBAL_INTRA_OP_NUM_THREADS];
  OrtStatusPtr (*set_inter)(void *, int) = (OrtStatusPtr (*)(void *, int))api[API_SET_GLOBAL_INTER_OP_NUM_THREADS];
  OrtStatusPtr (*set_spin)(void *, int) = (OrtStatusPtr (*)(void *, int))api[API_SET_GLOBAL_SPIN_CONTROL];
  OrtStatusPtr (*create_env)(int, const char *, const void *, void **) = (OrtStatusPtr (*)(int, const char *, const void *, void **))api[API_CREATE_ENV_WITH_GLOBAL_THREAD_POOLS];
  void (*release_tp)(void *) = (void (*)(void *))api[API_RELEASE_THREADING_OPTIONS];
  const char *(*message)(const void *) = (const char *(*)(const void *))api[API_GET_ERROR_MESSAGE];
  void (*release_status)(void *) = (void (*)(void *))api[API_RELEASE_STATUS];

  void *tp = NULL;
  void *ort_env = NULL;
  OrtStatusPtr st = create_tp(&tp);
  if (!st) st = set_intra(tp, threads);
  if (!st) st = set_inter(tp, 1);
  if (!st) st = set_spin(tp, spin ? 1 : 0);
  if (!st) st = create_env(LOG_WARNING, "onnxruntime-node", tp, &ort_env);
  if (tp) release_tp(tp);
  if (st) {
    char buf[1024];
    snprintf(buf, sizeof buf, "ONNX Runtime: %s", message(st));
    release_status(st);
    return fail(env, buf);
  }
  env_created = ort_env;
  pool_threads = threads;
  pool_spinning = spin;
  return pool(env);
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "initEnv", NAPI_AUTO_LENGTH, init_env, NULL, &fn);
  napi_set_named_property(env, exports, "initEnv", fn);
  return exports;
}
